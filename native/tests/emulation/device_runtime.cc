// The emulated device behind device_runtime.h.
//
// Execution model. A launch runs its grid on kSlots concurrent multiprocessors
// (block b on slot b % kSlots, one block at a time per slot), and each block on
// kWorkers OS threads that share its CUDA threads (thread t on worker
// t % kWorkers). A CUDA thread is a fiber (ucontext) with its own stack: one OS
// thread per CUDA thread was measured here at 2.7 ms per __syncthreads for a
// 512-thread block on 2 cores (15 ms with std::barrier), far too slow for
// hundreds of shapes, while a fiber switch takes well under a microsecond.
// Between two barriers each worker runs each of its fibers until it reaches the
// next barrier or ends, in an order shuffled per phase, while the other workers
// do the same concurrently; the phase ends when every thread of the block has
// arrived.
//
// What it checks:
//  - shared memory (static and dynamic) is poisoned with NaN (all bytes 0xff)
//    before each block, and so is device memory from cudaMalloc;
//  - a thread that ends while others wait at a barrier, and threads waiting at
//    different barriers, are faults (a hang or undefined behaviour on the GPU);
//  - cp.async copies land only when a wait covers their group (their
//    destination reads as NaN until then), and a thread may not end with copies
//    it never waited for;
//  - 16-byte vector accesses must be aligned; launch configurations are checked
//    as the runtime checks them (block size, grid limits, dynamic shared memory
//    above 48 KiB only after cudaFuncSetAttribute and never above the device's).
// Under ThreadSanitizer every CUDA thread is a TSan fiber, switched without
// synchronisation: happens-before between the threads of a block comes only
// from its barriers (a release on arrival, an acquire on leaving) and between
// blocks of one launch from nothing, so a missing __syncthreads, or two blocks
// writing one element, is reported as a data race. Under AddressSanitizer the
// fiber switches are annotated and the gaps around shared arrays are poisoned.
// Bookkeeping that fibers and their scheduler share uses relaxed atomics, which
// order nothing, so it adds no happens-before edge that could hide a race.
//
// TERA_EMULATION_DROP_BARRIER=file:line makes the __syncthreads at that site a
// no-op (the negative control: the checks must then fail); TERA_EMULATION_SEED
// changes the schedule.
#include "tests/emulation/device_runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TERA_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define TERA_EMU_TSAN 1
#endif

namespace tera {
namespace emu {
namespace {

// --- The emulated device --------------------------------------------------------------
constexpr int kSlots = 2;                 // blocks running at once
constexpr int kWorkers = 2;               // OS threads per block
constexpr size_t kStackBytes = 64 << 10;  // per CUDA thread, plus a guard page
constexpr int kMultiprocessors = 2;       // what the device reports (small grids)
constexpr size_t kSharedOptin = 227 << 10;
constexpr size_t kSharedPerMultiprocessor = 228 << 10;
constexpr size_t kDefaultDynamicShared = 48 << 10;
constexpr size_t kStaticSharedLimit = 48 << 10;
constexpr int kMaxThreadsPerMultiprocessor = 2048;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kGlobalMemory = size_t(16) << 30;
constexpr size_t kRedzone = 64;  // poisoned bytes around each shared array (ASan)
constexpr int kMaxStaticArrays = 16;

size_t roundUp(size_t x, size_t to) { return (x + to - 1) / to * to; }

uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void tsanRelease(void* address) {
#ifdef TERA_EMU_TSAN
  __tsan_release(address);
#else
  (void)address;
#endif
}

void tsanAcquire(void* address) {
#ifdef TERA_EMU_TSAN
  __tsan_acquire(address);
#else
  (void)address;
#endif
}

struct Settings {
  std::string dropFile;  // suffix of the barrier's file name
  unsigned dropLine = 0;
  uint64_t seed = 20260101;
  Settings() {
    if (const char* drop = std::getenv("TERA_EMULATION_DROP_BARRIER")) {
      const std::string text = drop;
      const size_t colon = text.rfind(':');
      if (colon == std::string::npos || colon == 0) {
        std::fprintf(stderr, "TERA_EMULATION_DROP_BARRIER must be file:line, not '%s'\n", drop);
        std::_Exit(2);
      }
      dropFile = text.substr(0, colon);
      dropLine = unsigned(std::strtoul(text.c_str() + colon + 1, nullptr, 10));
    }
    if (const char* seedText = std::getenv("TERA_EMULATION_SEED")) {
      seed = std::strtoull(seedText, nullptr, 10);
    }
  }
};

const Settings& settings() {
  static const Settings instance;
  return instance;
}

bool endsWith(const char* text, const std::string& suffix) {
  const size_t n = std::strlen(text);
  return n >= suffix.size() &&
         std::memcmp(text + n - suffix.size(), suffix.data(), suffix.size()) == 0;
}

// A mutex + condition variable barrier for the few OS threads of one slot.
class OsBarrier {
 public:
  explicit OsBarrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      wake_.notify_all();
      return;
    }
    wake_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  int count_, arrived_ = 0;
  uint64_t generation_ = 0;
};

// --- Launches, blocks, threads ---------------------------------------------------------------

struct Launch {
  const char* name;
  const std::function<void()>* thread;
  dim3 grid, block;
  size_t dynamicBytes;
  int threadsPerBlock;
  int64_t blocks;
  int slots, workers;
  uint64_t seed;
  char start = 0;  // released by the host before the launch, acquired by every scheduler
  char token = 0;  // released by every thread at its end, acquired by the host after the launch
};

struct BlockRun {
  const Launch* launch;
  dim3 index;
  unsigned char* arena = nullptr;  // dynamic shared memory, then the static arrays
  size_t arenaBytes = 0;
  size_t staticBase = 0;
  char tokens[2] = {0, 0};  // barrier sync objects, alternating between phases
};

enum FiberState { kRunning = 0, kAtBarrier = 1, kFinished = 2 };

struct Copy {
  float* dst;
  const float* src;
};

struct Worker;

// A CUDA thread: a fiber of one worker, reused for one thread of each block the
// worker runs (its stack and TSan identity live as long as the process).
struct Fiber {
  ucontext_t context;
  Worker* worker = nullptr;
  char* stack = nullptr;
  void* tsanFiber = nullptr;
  void* asanFakeStack = nullptr;
  char handoff =
      0;  // sync object: scheduler -> thread at its start, thread -> scheduler at its end
  // Set by the scheduler before each start.
  ThreadIndex index;
  BlockRun* block = nullptr;
  // Read by the scheduler while the block runs (relaxed: no happens-before).
  std::atomic<int> state{kFinished};
  std::atomic<const char*> siteFile{nullptr};
  std::atomic<unsigned> siteLine{0};
  std::atomic<int64_t> barriers{0};
  // The thread's own.
  size_t sharedOffset = 0;
  int staticArrays = 0;
  std::vector<Copy> openGroup;
  std::deque<std::vector<Copy>> committed;
};

// A persistent OS thread of the pool: worker w of slot s.
struct Worker {
  int slot = 0, index = 0;
  ucontext_t scheduler;
  void* tsanScheduler = nullptr;
  const void* asanStackBottom = nullptr;
  size_t asanStackSize = 0;
  void* asanFakeStack = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers;
};

thread_local std::atomic<Fiber*> runningFiber{nullptr};

Fiber* running() { return runningFiber.load(std::memory_order_relaxed); }

std::mutex sitesMutex;
std::vector<BarrierSite> sites;
std::map<std::pair<const char*, unsigned>, size_t> siteIndex;

std::string siteText(const char* file, unsigned line) {
  std::string path = file ? file : "?";
  const size_t native = path.rfind("native/");
  if (native != std::string::npos) path = path.substr(native);
  return path + ":" + std::to_string(line);
}

void recordSite(const char* file, unsigned line, int64_t calls) {
  std::lock_guard<std::mutex> lock(sitesMutex);
  const auto key = std::make_pair(file, line);
  auto found = siteIndex.find(key);
  if (found == siteIndex.end()) {
    found = siteIndex.emplace(key, sites.size()).first;
    sites.push_back({siteText(file, line), 0});
  }
  sites[found->second].calls += calls;
}

std::string describeIndex(const dim3& v) {
  return "(" + std::to_string(v.x) + "," + std::to_string(v.y) + "," + std::to_string(v.z) + ")";
}

[[noreturn]] void blockFault(const BlockRun& block, const std::string& message) {
  std::fprintf(stderr, "tera emulation fault: %s (kernel %s, block %s)\n", message.c_str(),
               block.launch->name, describeIndex(block.index).c_str());
  std::fflush(stderr);
  std::_Exit(kFaultExitStatus);
}

void switchToScheduler(Fiber* f) {
  Worker* w = f->worker;
#ifdef TERA_EMU_TSAN
  __tsan_switch_to_fiber(w->tsanScheduler, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef TERA_EMU_ASAN
  __sanitizer_start_switch_fiber(&f->asanFakeStack, w->asanStackBottom, w->asanStackSize);
#endif
  swapcontext(&f->context, &w->scheduler);
#ifdef TERA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->asanFakeStack, &w->asanStackBottom, &w->asanStackSize);
#endif
}

void resume(Worker* w, Fiber* f) {
  runningFiber.store(f, std::memory_order_relaxed);
#ifdef TERA_EMU_TSAN
  __tsan_switch_to_fiber(f->tsanFiber, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef TERA_EMU_ASAN
  __sanitizer_start_switch_fiber(&w->asanFakeStack, f->stack, kStackBytes);
#endif
  swapcontext(&w->scheduler, &f->context);
#ifdef TERA_EMU_ASAN
  __sanitizer_finish_switch_fiber(w->asanFakeStack, nullptr, nullptr);
#endif
  runningFiber.store(nullptr, std::memory_order_relaxed);
}

// The life of a fiber: one CUDA thread per start, then back to the scheduler.
void fiberMain() {
  Fiber* f = running();
#ifdef TERA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &f->worker->asanStackBottom, &f->worker->asanStackSize);
#endif
  for (;;) {
    tsanAcquire(&f->handoff);  // what the scheduler set up for this thread
    (*f->block->launch->thread)();
    bool pending = !f->openGroup.empty();
    for (const auto& group : f->committed) pending = pending || !group.empty();
    if (pending) fault("the thread ended with cp.async copies that no wait covered");
    f->committed.clear();
    tsanRelease(const_cast<char*>(&f->block->launch->token));
    tsanRelease(&f->handoff);
    f->state.store(kFinished, std::memory_order_relaxed);
    switchToScheduler(f);
  }
}

// Kept out of line: getcontext returns twice, which must not touch the caller's locals.
__attribute__((noinline)) void makeFiberContext(Fiber* f) {
  getcontext(&f->context);
  f->context.uc_stack.ss_sp = f->stack;
  f->context.uc_stack.ss_size = kStackBytes;
  f->context.uc_link = nullptr;
  makecontext(&f->context, fiberMain, 0);
}

Fiber* newFiber(Worker* w) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  auto f = std::make_unique<Fiber>();
  f->worker = w;
  char* base = static_cast<char*>(mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) fault("cannot map a thread stack");
  mprotect(base, page, PROT_NONE);  // guard page below the stack
  f->stack = base + page;
  makeFiberContext(f.get());
#ifdef TERA_EMU_TSAN
  f->tsanFiber = __tsan_create_fiber(0);
#endif
  w->fibers.push_back(std::move(f));
  return w->fibers.back().get();
}

// What one worker saw in one phase.
struct PhaseSummary {
  int atBarrier = 0, finished = 0;
  const char* file = nullptr;
  unsigned line = 0;
  int64_t barriers = 0;
  bool uniform = true;  // every waiting thread at the same barrier
};

struct Slot {
  OsBarrier* barrier = nullptr;  // the slot's workers, per launch
  BlockRun* block = nullptr;
  PhaseSummary summary[2][kWorkers];
};

// Runs this worker's share of one block's threads to the end.
void runBlock(Worker& worker, Slot& slot, BlockRun& block) {
  const Launch& launch = *block.launch;
  std::vector<Fiber*> mine;
  size_t next = 0;
  for (int t = worker.index; t < launch.threadsPerBlock; t += launch.workers) {
    Fiber* f = next < worker.fibers.size() ? worker.fibers[next].get() : newFiber(&worker);
    ++next;
    const unsigned u = unsigned(t);
    f->index.thread = dim3(u % launch.block.x, u / launch.block.x % launch.block.y,
                           u / (launch.block.x * launch.block.y));
    f->index.block = block.index;
    f->index.blockSize = launch.block;
    f->index.gridSize = launch.grid;
    f->block = &block;
    f->state.store(kRunning, std::memory_order_relaxed);
    f->barriers.store(0, std::memory_order_relaxed);
    f->sharedOffset = block.staticBase;
    f->staticArrays = 0;
    tsanRelease(&f->handoff);
    mine.push_back(f);
  }

  std::vector<Fiber*> order;
  for (int64_t phase = 0;; ++phase) {
    order.clear();
    for (Fiber* f : mine) {
      if (f->state.load(std::memory_order_relaxed) != kFinished) order.push_back(f);
    }
    uint64_t state = mix(launch.seed ^ mix(uint64_t(block.index.x) << 32 | block.index.y) ^
                         mix(uint64_t(phase) << 8 | uint64_t(worker.index)));
    for (size_t i = order.size(); i > 1; --i) {  // Fisher-Yates
      state = mix(state);
      std::swap(order[i - 1], order[state % i]);
    }
    for (Fiber* f : order) resume(&worker, f);

    PhaseSummary mySummary;
    for (Fiber* f : mine) {
      if (f->state.load(std::memory_order_relaxed) == kFinished) {
        ++mySummary.finished;
        continue;
      }
      const char* file = f->siteFile.load(std::memory_order_relaxed);
      const unsigned line = f->siteLine.load(std::memory_order_relaxed);
      const int64_t count = f->barriers.load(std::memory_order_relaxed);
      if (mySummary.atBarrier++ == 0) {
        mySummary.file = file;
        mySummary.line = line;
        mySummary.barriers = count;
      } else if (file != mySummary.file || line != mySummary.line || count != mySummary.barriers) {
        mySummary.uniform = false;
      }
    }
    slot.summary[phase & 1][worker.index] = mySummary;
    slot.barrier->wait();
    int atBarrier = 0, finished = 0;
    bool uniform = true;
    const PhaseSummary* first = nullptr;
    for (int w = 0; w < launch.workers; ++w) {
      const PhaseSummary& s = slot.summary[phase & 1][w];
      atBarrier += s.atBarrier;
      finished += s.finished;
      uniform = uniform && s.uniform;
      if (s.atBarrier == 0) continue;
      if (!first) {
        first = &s;
      } else if (s.file != first->file || s.line != first->line || s.barriers != first->barriers) {
        uniform = false;
      }
    }
    if (atBarrier == 0) break;  // every thread has ended
    if (finished > 0) {
      blockFault(block, std::to_string(finished) + " threads ended while " +
                            std::to_string(atBarrier) + " wait at __syncthreads (" +
                            siteText(first->file, first->line) + ")");
    }
    if (!uniform) blockFault(block, "threads of the block wait at different __syncthreads");
    recordSite(first->file, first->line, mySummary.atBarrier);
  }
  for (Fiber* f : mine) tsanAcquire(&f->handoff);  // before the fiber is set up again
}

void runSlot(Worker& worker, Slot& slot, const Launch& launch) {
  for (int64_t b = worker.slot; b < launch.blocks; b += launch.slots) {
    if (worker.index == 0) {
      auto* block = new BlockRun();
      block->launch = &launch;
      block->index = dim3(unsigned(b % launch.grid.x), unsigned(b / launch.grid.x % launch.grid.y),
                          unsigned(b / (int64_t(launch.grid.x) * launch.grid.y)));
      block->staticBase = roundUp(launch.dynamicBytes, 16) + kRedzone;
      block->arenaBytes =
          block->staticBase + kStaticSharedLimit + kMaxStaticArrays * (kRedzone + 16);
      block->arena =
          static_cast<unsigned char*>(::operator new(block->arenaBytes, std::align_val_t(128)));
      std::memset(block->arena, 0xff, block->arenaBytes);  // NaN as float and double
#ifdef TERA_EMU_ASAN
      ASAN_POISON_MEMORY_REGION(block->arena + launch.dynamicBytes,
                                block->arenaBytes - launch.dynamicBytes);
#endif
      slot.block = block;
    }
    slot.barrier->wait();
    runBlock(worker, slot, *slot.block);
    slot.barrier->wait();
    if (worker.index == 0) {
#ifdef TERA_EMU_ASAN
      ASAN_UNPOISON_MEMORY_REGION(slot.block->arena, slot.block->arenaBytes);
#endif
      ::operator delete(slot.block->arena, std::align_val_t(128));
      delete slot.block;
      slot.block = nullptr;
    }
  }
}

// The persistent workers: kSlots x kWorkers OS threads, each waiting for launches.
class Pool {
 public:
  Pool() {
    for (int s = 0; s < kSlots; ++s) {
      for (int w = 0; w < kWorkers; ++w) {
        auto worker = std::make_unique<Worker>();
        worker->slot = s;
        worker->index = w;
        Worker* raw = worker.get();
        workers_.push_back(std::move(worker));
        threads_.emplace_back([this, raw] { serve(*raw); });
        threads_.back().detach();
      }
    }
  }

  void run(const Launch& launch) {
    std::vector<std::unique_ptr<OsBarrier>> barriers;
    for (Slot& slot : slots_) {
      barriers.push_back(std::make_unique<OsBarrier>(launch.workers));
      slot.barrier = barriers.back().get();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    launch_ = &launch;
    done_ = 0;
    ++generation_;
    wake_.notify_all();
    finished_.wait(lock, [&] { return done_ == int(workers_.size()); });
    launch_ = nullptr;
  }

 private:
  void serve(Worker& worker) {
#ifdef TERA_EMU_TSAN
    worker.tsanScheduler = __tsan_get_current_fiber();
#endif
    uint64_t seen = 0;
    for (;;) {
      const Launch* launch;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        launch = launch_;
      }
      if (worker.slot < launch->slots && worker.index < launch->workers) {
        tsanAcquire(const_cast<char*>(&launch->start));
        runSlot(worker, slots_[worker.slot], *launch);
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (++done_ == int(workers_.size())) finished_.notify_one();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  uint64_t generation_ = 0;
  int done_ = 0;
  const Launch* launch_ = nullptr;
  Slot slots_[kSlots];
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;  // never joined: see pool()
};

// Process lifetime, never destroyed: its threads wait for launches until exit.
Pool& pool() {
  static Pool* instance = new Pool();
  return *instance;
}

// --- Runtime state ---------------------------------------------------------------------
thread_local cudaError_t lastError = cudaSuccess;
std::atomic<uint64_t> launchCount{0};

std::mutex attributeMutex;
std::map<const void*, int> maxDynamicShared;

std::mutex memoryMutex;
std::map<const char*, size_t> allocations;  // device allocations: start -> bytes
size_t allocatedBytes = 0;

cudaError_t fail(cudaError_t error) {
  lastError = error;
  return error;
}

}  // namespace

bool isDeviceRange(const void* pointer, size_t bytes) {
  const char* p = static_cast<const char*>(pointer);
  std::lock_guard<std::mutex> lock(memoryMutex);
  auto it = allocations.upper_bound(p);
  if (it == allocations.begin()) return false;
  --it;
  return p >= it->first && size_t(p - it->first) + bytes <= it->second;
}

// --- Device built-ins -------------------------------------------------------------------

const ThreadIndex& current() {
  Fiber* f = running();
  if (!f) fault("a device built-in was used outside a kernel");
  return f->index;
}

void syncThreads(const std::source_location& site) {
  Fiber* f = running();
  if (!f) fault("__syncthreads outside a kernel");
  const Settings& s = settings();
  if (!s.dropFile.empty() && site.line() == s.dropLine && endsWith(site.file_name(), s.dropFile)) {
    return;  // the negative control: this barrier is removed
  }
  f->siteFile.store(site.file_name(), std::memory_order_relaxed);
  f->siteLine.store(site.line(), std::memory_order_relaxed);
  const int64_t count = f->barriers.load(std::memory_order_relaxed) + 1;
  f->barriers.store(count, std::memory_order_relaxed);
  char* token = &f->block->tokens[count & 1];
  tsanRelease(token);
  f->state.store(kAtBarrier, std::memory_order_relaxed);
  switchToScheduler(f);
  f->state.store(kRunning, std::memory_order_relaxed);
  tsanAcquire(token);
}

void* sharedArray(size_t bytes) {
  Fiber* f = running();
  if (!f) fault("a __shared__ array was declared outside a kernel");
  BlockRun& block = *f->block;
  const size_t used = f->sharedOffset - block.staticBase + bytes;
  if (++f->staticArrays > kMaxStaticArrays || used > kStaticSharedLimit) {
    fault("static shared memory exceeds 48 KiB");
  }
  if (block.launch->dynamicBytes + used > kSharedOptin) {
    fault("static plus dynamic shared memory exceeds the device's limit");
  }
  unsigned char* p = block.arena + f->sharedOffset;
#ifdef TERA_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#endif
  f->sharedOffset += roundUp(bytes, 16) + kRedzone;
  return p;
}

void* dynamicShared() {
  Fiber* f = running();
  if (!f) fault("extern __shared__ memory was used outside a kernel");
  return f->block->arena;
}

void asyncCopy(float* sharedDst, const float* globalSrc) {
  Fiber* f = running();
  if (!f) fault("cp.async outside a kernel");
  checkAligned(sharedDst, 4, "cp.async destination");
  checkAligned(globalSrc, 4, "cp.async source");
  const BlockRun& block = *f->block;
  const unsigned char* dst = reinterpret_cast<const unsigned char*>(sharedDst);
  if (dst < block.arena || dst + sizeof(float) > block.arena + block.arenaBytes) {
    fault("cp.async destination is not in the block's shared memory");
  }
  *sharedDst = std::numeric_limits<float>::quiet_NaN();  // in flight: undefined until waited for
  f->openGroup.push_back({sharedDst, globalSrc});
}

void asyncCommit() {
  Fiber* f = running();
  if (!f) fault("cp.async.commit_group outside a kernel");
  f->committed.push_back(std::move(f->openGroup));
  f->openGroup.clear();
}

void asyncWait(int pendingGroups) {
  Fiber* f = running();
  if (!f) fault("cp.async.wait_group outside a kernel");
  while (f->committed.size() > size_t(pendingGroups)) {
    for (const Copy& c : f->committed.front()) *c.dst = *c.src;
    f->committed.pop_front();
  }
}

void checkAligned(const void* address, size_t alignment, const char* what) {
  if (reinterpret_cast<uintptr_t>(address) % alignment != 0) {
    char text[160];
    std::snprintf(text, sizeof text, "misaligned address %p for %s (needs %zu-byte alignment)",
                  address, what, alignment);
    fault(text);
  }
}

void fault(const std::string& message) {
  if (Fiber* f = running()) {
    std::fprintf(stderr, "tera emulation fault: %s (kernel %s, block %s, thread %s)\n",
                 message.c_str(), f->block->launch->name, describeIndex(f->index.block).c_str(),
                 describeIndex(f->index.thread).c_str());
  } else {
    std::fprintf(stderr, "tera emulation fault: %s\n", message.c_str());
  }
  std::fflush(stderr);
  std::_Exit(kFaultExitStatus);
}

int runGrid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamicSharedBytes,
            const std::function<void()>& thread) {
  settings();  // read the environment here, before any fiber exists
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  if (threads < 1 || threads > kMaxThreadsPerBlock || block.z > 64 || grid.x < 1 || grid.y < 1 ||
      grid.z < 1 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    return fail(cudaErrorInvalidConfiguration);
  }
  size_t allowed = kDefaultDynamicShared;
  {
    std::lock_guard<std::mutex> lock(attributeMutex);
    const auto found = maxDynamicShared.find(kernel);
    if (found != maxDynamicShared.end()) allowed = size_t(found->second);
  }
  if (dynamicSharedBytes > allowed) return fail(cudaErrorInvalidValue);

  auto launch = std::make_unique<Launch>();
  launch->name = name;
  launch->thread = &thread;
  launch->grid = grid;
  launch->block = block;
  launch->dynamicBytes = dynamicSharedBytes;
  launch->threadsPerBlock = int(threads);
  launch->blocks = int64_t(grid.x) * grid.y * grid.z;
  launch->slots = int(std::min<int64_t>(kSlots, launch->blocks));
  launch->workers = int(std::min<int64_t>(kWorkers, threads));
  launch->seed = mix(settings().seed ^ mix(launchCount.fetch_add(1)));
  tsanRelease(&launch->start);
  pool().run(*launch);
  tsanAcquire(&launch->token);
  return cudaSuccess;
}

std::vector<BarrierSite> barrierSites() {
  std::lock_guard<std::mutex> lock(sitesMutex);
  return sites;
}

}  // namespace emu
}  // namespace tera

unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  unsigned long long old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (value < old && !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
  }
  return old;
}

// --- Runtime API --------------------------------------------------------------------------
using tera::emu::fail;

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t error = tera::emu::lastError;
  tera::emu::lastError = cudaSuccess;
  return error;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  *version = 13000;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp();
  std::snprintf(prop->name, sizeof prop->name, "host emulation");
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = tera::emu::kMultiprocessors;
  prop->sharedMemPerBlockOptin = tera::emu::kSharedOptin;
  prop->sharedMemPerMultiprocessor = tera::emu::kSharedPerMultiprocessor;
  prop->maxThreadsPerMultiProcessor = tera::emu::kMaxThreadsPerMultiprocessor;
  prop->totalGlobalMem = tera::emu::kGlobalMemory;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  static char dummy;
  *stream = reinterpret_cast<cudaStream_t>(&dummy);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  using namespace tera::emu;
  *pointer = nullptr;
  {
    std::lock_guard<std::mutex> lock(memoryMutex);
    if (bytes > kGlobalMemory - allocatedBytes) return fail(cudaErrorMemoryAllocation);
    allocatedBytes += bytes;
  }
  // Exact size, so that AddressSanitizer sees any access past the end.
  char* p = static_cast<char*>(::operator new(bytes, std::align_val_t(256), std::nothrow));
  if (!p) {
    std::lock_guard<std::mutex> lock(memoryMutex);
    allocatedBytes -= bytes;
    return fail(cudaErrorMemoryAllocation);
  }
  std::memset(p, 0xff, bytes);  // device memory starts undefined: NaN
  std::lock_guard<std::mutex> lock(memoryMutex);
  allocations[p] = bytes;
  *pointer = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  using namespace tera::emu;
  if (!pointer) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(memoryMutex);
    const auto found = allocations.find(static_cast<const char*>(pointer));
    if (found == allocations.end()) return fail(cudaErrorInvalidValue);
    allocatedBytes -= found->second;
    allocations.erase(found);
  }
  ::operator delete(pointer, std::align_val_t(256));
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* freeBytes, size_t* totalBytes) {
  using namespace tera::emu;
  std::lock_guard<std::mutex> lock(memoryMutex);
  *freeBytes = kGlobalMemory - allocatedBytes;
  *totalBytes = kGlobalMemory;
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  if (!tera::emu::isDeviceRange(pointer, bytes)) return fail(cudaErrorInvalidValue);
  std::memset(pointer, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  using tera::emu::isDeviceRange;
  if (bytes == 0) return cudaSuccess;
  const bool dstDevice = kind != cudaMemcpyDeviceToHost, srcDevice = kind != cudaMemcpyHostToDevice;
  if ((dstDevice && !isDeviceRange(dst, bytes)) || (srcDevice && !isDeviceRange(src, bytes))) {
    return fail(cudaErrorInvalidValue);
  }
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* kernel) {
  using namespace tera::emu;
  std::lock_guard<std::mutex> lock(attributeMutex);
  const auto found = maxDynamicShared.find(kernel);
  attributes->maxDynamicSharedSizeBytes =
      int(found == maxDynamicShared.end() ? kDefaultDynamicShared : size_t(found->second));
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value) {
  using namespace tera::emu;
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) > kSharedOptin) {
    return fail(cudaErrorInvalidValue);
  }
  std::lock_guard<std::mutex> lock(attributeMutex);
  maxDynamicShared[kernel] = value;
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads,
                                                          size_t dynamicSharedBytes) {
  using namespace tera::emu;
  if (threads < 1 || threads > kMaxThreadsPerBlock) return fail(cudaErrorInvalidValue);
  // As the hardware: threads, shared memory (1 KiB reserved per block) and 32 blocks.
  int64_t limit = std::min<int64_t>(kMaxThreadsPerMultiprocessor / threads, 32);
  if (dynamicSharedBytes > kSharedOptin) {
    limit = 0;
  } else {
    limit =
        std::min<int64_t>(limit, int64_t(kSharedPerMultiprocessor / (dynamicSharedBytes + 1024)));
  }
  *blocks = int(limit);
  return cudaSuccess;
}
