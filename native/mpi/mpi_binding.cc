// tera.distributed's MPI binding (tera_mpi.node), compiled against the local
// MPI (see CMakeLists.txt). lib/distributed/mpi.ts loads it; users never call
// it directly.
//
// Offers MPI_Init_thread / Finalize / Abort, in-place Allreduce and Bcast on
// typed arrays, Allgather of fixed-size byte records and Barrier. Synchronous
// entries block the calling thread; *Async entries run the same call on a libuv
// worker thread and return a Promise (they need MPI_THREAD_SERIALIZED or more).
// One call at a time: a second one while another is in flight is refused,
// because every rank must issue its collectives in the same order.
//
// Bounded failure: every blocking call runs under a watchdog thread. A call
// still blocked after the timeout means a peer is dead, stuck or in another
// collective; the watchdog prints which call on which rank, then MPI_Abort ends
// the whole job. MPI errors stay fatal (MPI_ERRORS_ARE_FATAL) for the same
// reason: after a failed collective the ranks no longer agree on anything.
//
// Buffers belong to JavaScript. An async call holds a reference to its typed
// array until the Promise settles; lib/ does not touch the array meanwhile.
#include <mpi.h>
#include <napi.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

// Exit status of a job the watchdog ended (the one timeout(1) uses).
constexpr int kTimeoutExitCode = 124;

struct Process {
  bool initialized = false;
  bool finalized = false;
  int rank = 0;
  int size = 1;
  int threadLevel = MPI_THREAD_SINGLE;
};
Process process;  // written on the main thread by init/finalize only

// One blocking call is watched at a time (calls are serialised, see Busy).
class Watchdog {
 public:
  void start(double timeoutSeconds) {
    timeoutSeconds_ = timeoutSeconds;
    thread_ = std::thread([this] { run(); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  void setTimeout(double seconds) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      timeoutSeconds_ = seconds;
    }
    wake_.notify_all();
  }

  void begin(std::string what) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      what_ = std::move(what);
      started_ = Clock::now();
      watching_ = true;
      ++serial_;
    }
    wake_.notify_all();
  }

  void end() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      watching_ = false;
    }
    wake_.notify_all();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      if (!watching_) {
        wake_.wait(lock);
        continue;
      }
      const uint64_t serial = serial_;
      const auto deadline = started_ + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeoutSeconds_));
      if (wake_.wait_until(lock, deadline) == std::cv_status::no_timeout) continue;
      if (stopping_ || !watching_ || serial_ != serial || Clock::now() < deadline) continue;
      std::fprintf(stderr,
                   "tera-peft distributed: rank %d of %d: %s has not completed after %g s: "
                   "another rank is dead, stuck, or in a different collective. Aborting the "
                   "job (init({ timeoutSeconds }) sets this limit).\n",
                   process.rank, process.size, what_.c_str(), timeoutSeconds_);
      std::fflush(stderr);
      lock.unlock();
      MPI_Abort(MPI_COMM_WORLD, kTimeoutExitCode);
      std::_Exit(kTimeoutExitCode);  // MPI_Abort does not return; never continue if it did
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::thread thread_;
  bool stopping_ = false;
  bool watching_ = false;
  uint64_t serial_ = 0;
  std::string what_;
  Clock::time_point started_;
  double timeoutSeconds_ = 600;
};
// Never destroyed: a process that exits without finalize() must not run a
// destructor on a joinable thread (that would call std::terminate).
Watchdog& watchdog = *new Watchdog();

// Refuses a second call while one is in flight (sync or async).
std::atomic<bool> busy{false};
std::atomic<uint64_t> callCount{0};

class Busy {
 public:
  explicit Busy(const std::string& what) {
    bool expected = false;
    if (!busy.compare_exchange_strong(expected, true)) {
      throw std::runtime_error(what +
                               ": another MPI call is still in flight; await it first (every "
                               "rank must issue its collectives in the same order)");
    }
  }
  ~Busy() { busy = false; }
  Busy(const Busy&) = delete;
  Busy& operator=(const Busy&) = delete;
};

// Runs `call` under the watchdog, labelled for its message.
void watched(const std::string& what, const std::function<void()>& call) {
  watchdog.begin(what + " (call #" + std::to_string(++callCount) + " on this rank)");
  struct End {
    ~End() { watchdog.end(); }
  } end;
  call();
}

void requireInitialized(const char* what) {
  if (!process.initialized || process.finalized) {
    throw std::runtime_error(std::string(what) + ": MPI is not initialised (call init() first)" +
                             (process.finalized ? "; it was finalised already" : ""));
  }
}

// A typed array's memory as MPI sees it.
struct Buffer {
  char* data = nullptr;
  size_t count = 0;  // elements of `type`
  size_t elementSize = 1;
  MPI_Datatype type = MPI_BYTE;
};

Buffer numericBuffer(Napi::Value value, const std::string& what) {
  if (!value.IsTypedArray()) throw std::runtime_error(what + " must be a typed array");
  Napi::TypedArray array = value.As<Napi::TypedArray>();
  Buffer buffer;
  switch (array.TypedArrayType()) {
    case napi_float32_array:
      buffer.type = MPI_FLOAT;
      break;
    case napi_float64_array:
      buffer.type = MPI_DOUBLE;
      break;
    case napi_int32_array:
      buffer.type = MPI_INT;
      break;
    default:
      throw std::runtime_error(what + " must be a Float32Array, Float64Array or Int32Array");
  }
  buffer.elementSize = array.ElementSize();
  buffer.count = array.ElementLength();
  buffer.data = static_cast<char*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  return buffer;
}

Buffer byteBuffer(Napi::Value value, const std::string& what) {
  if (!value.IsTypedArray()) throw std::runtime_error(what + " must be a typed array");
  Napi::TypedArray array = value.As<Napi::TypedArray>();
  Buffer buffer;
  buffer.count = array.ByteLength();
  buffer.data = static_cast<char*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  return buffer;
}

// MPI counts are ints: larger buffers go in chunks of at most 2^30 elements.
void inChunks(const Buffer& buffer, const std::function<void(char*, int)>& call) {
  constexpr size_t kChunk = size_t(1) << 30;
  for (size_t first = 0; first < buffer.count; first += kChunk) {
    const size_t n = buffer.count - first < kChunk ? buffer.count - first : kChunk;
    call(buffer.data + first * buffer.elementSize, int(n));
  }
}

MPI_Op reduction(Napi::Value value) {
  const std::string name = value.IsString() ? value.As<Napi::String>().Utf8Value() : "";
  if (name == "sum") return MPI_SUM;
  if (name == "max") return MPI_MAX;
  if (name == "min") return MPI_MIN;
  throw std::runtime_error("allreduce: op must be 'sum', 'max' or 'min'");
}

int rootRank(Napi::Value value, const char* what) {
  const double root = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
  if (root != double(int(root)) || root < 0 || root >= process.size) {
    throw std::runtime_error(std::string(what) + ": root must be a rank in [0, " +
                             std::to_string(process.size) + ")");
  }
  return int(root);
}

double timeoutSeconds(Napi::Value value) {
  const double seconds = value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : -1;
  if (!(seconds > 0 && seconds <= 1e7)) {
    throw std::runtime_error("the timeout must be a number of seconds in (0, 1e7]");
  }
  return seconds;
}

// Turns C++ exceptions into JavaScript errors.
template <typename Body>
auto guard(Napi::Env env, Body body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// Runs a prepared call on a libuv worker thread; keeps `keepAlive` (the typed
// array) referenced until the Promise settles.
class CallWorker : public Napi::AsyncWorker {
 public:
  CallWorker(Napi::Env env, std::function<void()> call, Napi::Value keepAlive)
      : Napi::AsyncWorker(env, "tera-mpi"),
        deferred_(Napi::Promise::Deferred::New(env)),
        call_(std::move(call)) {
    if (keepAlive.IsObject()) keepAlive_ = Napi::Persistent(keepAlive.As<Napi::Object>());
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      call_();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
    call_ = nullptr;  // releases the Busy flag as soon as MPI returns
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& error) override { deferred_.Reject(error.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> call_;
  Napi::ObjectReference keepAlive_;
};

// A validated call: what it is (for messages) and the MPI work. The Busy flag is
// taken here, on the JavaScript thread, so a refused call never reaches MPI.
struct Prepared {
  std::string what;
  std::function<void()> work;
};

Napi::Value runSync(Napi::Env env, const Prepared& prepared) {
  Busy flag(prepared.what);
  watched(prepared.what, prepared.work);
  return env.Undefined();
}

Napi::Value runAsync(Napi::Env env, Prepared prepared, Napi::Value keepAlive) {
  if (process.threadLevel < MPI_THREAD_SERIALIZED) {
    throw std::runtime_error(prepared.what +
                             " on a worker thread: this MPI gives no MPI_THREAD_SERIALIZED "
                             "support; use the synchronous call");
  }
  auto busyFlag = std::make_shared<Busy>(prepared.what);
  auto* worker = new CallWorker(
      env, [busyFlag, prepared] { watched(prepared.what, prepared.work); }, keepAlive);
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

std::string libraryVersion() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, strnlen(text, size_t(length)));  // length may count the NUL
  const size_t end = version.find_last_not_of(" \n\r\t");
  version.erase(end == std::string::npos ? 0 : end + 1);
  const size_t newline = version.find('\n');
  return newline == std::string::npos ? version : version.substr(0, newline);
}

const char* threadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "single";
    case MPI_THREAD_FUNNELED:
      return "funneled";
    case MPI_THREAD_SERIALIZED:
      return "serialized";
    default:
      return "multiple";
  }
}

// --- Entry points ------------------------------------------------------------

// init(timeoutSeconds) -> { rank, size, localRank, localSize, processor, threadLevel, library }
Napi::Value init(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const double timeout = timeoutSeconds(info[0]);
    if (process.finalized) {
      throw std::runtime_error("init: MPI was finalised in this process and cannot start again");
    }
    if (process.initialized) throw std::runtime_error("init: MPI is already initialised");
    int provided = MPI_THREAD_SINGLE;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    process.initialized = true;
    process.threadLevel = provided;
    MPI_Comm_rank(MPI_COMM_WORLD, &process.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &process.size);
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int localRank = 0, localSize = 1;
    MPI_Comm_rank(node, &localRank);
    MPI_Comm_size(node, &localSize);
    MPI_Comm_free(&node);
    char name[MPI_MAX_PROCESSOR_NAME];
    int nameLength = 0;
    MPI_Get_processor_name(name, &nameLength);
    watchdog.start(timeout);

    Napi::Object result = Napi::Object::New(info.Env());
    result.Set("rank", process.rank);
    result.Set("size", process.size);
    result.Set("localRank", localRank);
    result.Set("localSize", localSize);
    result.Set("processor", std::string(name, size_t(nameLength)));
    result.Set("threadLevel", threadLevelName(provided));
    result.Set("library", libraryVersion());
    return result;
  });
}

// libraryVersion(): callable before init (MPI 3).
Napi::Value libraryVersionEntry(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), libraryVersion());
}

Napi::Value setTimeout(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    watchdog.setTimeout(timeoutSeconds(info[0]));
    return info.Env().Undefined();
  });
}

Napi::Value finalize(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    requireInitialized("finalize");
    Busy flag("finalize");
    watched("MPI_Finalize", [] { MPI_Finalize(); });
    process.finalized = true;
    watchdog.stop();
    return info.Env().Undefined();
  });
}

// abortJob(code, message): prints the message and ends every rank of the job.
Napi::Value abortJob(const Napi::CallbackInfo& info) {
  const double code =
      info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 1;
  const std::string message =
      info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  if (!message.empty()) std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  const int status = code >= 1 && code <= 255 ? int(code) : 1;
  if (process.initialized && !process.finalized) MPI_Abort(MPI_COMM_WORLD, status);
  std::_Exit(status);
}

Prepared prepareAllreduce(const Napi::CallbackInfo& info) {
  requireInitialized("allreduce");
  const Buffer buffer = numericBuffer(info[0], "allreduce: data");
  const MPI_Op op = reduction(info[1]);
  return {"MPI_Allreduce of " + std::to_string(buffer.count * buffer.elementSize) + " bytes",
          [buffer, op] {
            inChunks(buffer, [&](char* data, int n) {
              MPI_Allreduce(MPI_IN_PLACE, data, n, buffer.type, op, MPI_COMM_WORLD);
            });
          }};
}

Prepared prepareBroadcast(const Napi::CallbackInfo& info) {
  requireInitialized("broadcast");
  const Buffer buffer = byteBuffer(info[0], "broadcast: data");
  const int root = rootRank(info[1], "broadcast");
  return {
      "MPI_Bcast of " + std::to_string(buffer.count) + " bytes from rank " + std::to_string(root),
      [buffer, root] {
        inChunks(buffer,
                 [&](char* data, int n) { MPI_Bcast(data, n, MPI_BYTE, root, MPI_COMM_WORLD); });
      }};
}

Prepared prepareBarrier() {
  requireInitialized("barrier");
  return {"MPI_Barrier", [] { MPI_Barrier(MPI_COMM_WORLD); }};
}

Napi::Value allreduce(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return runSync(info.Env(), prepareAllreduce(info)); });
}
Napi::Value allreduceAsync(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return runAsync(info.Env(), prepareAllreduce(info), info[0]); });
}
Napi::Value broadcast(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return runSync(info.Env(), prepareBroadcast(info)); });
}
Napi::Value broadcastAsync(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return runAsync(info.Env(), prepareBroadcast(info), info[0]); });
}
Napi::Value barrier(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return runSync(info.Env(), prepareBarrier()); });
}
Napi::Value barrierAsync(const Napi::CallbackInfo& info) {
  return guard(info.Env(),
               [&] { return runAsync(info.Env(), prepareBarrier(), info.Env().Undefined()); });
}

// allgather(send, recv): recv (size * send.byteLength bytes) receives every
// rank's record in rank order.
Prepared prepareAllgather(const Napi::CallbackInfo& info) {
  requireInitialized("allgather");
  const Buffer send = byteBuffer(info[0], "allgather: send");
  const Buffer recv = byteBuffer(info[1], "allgather: recv");
  if (send.count == 0 || send.count > size_t(INT_MAX) / size_t(process.size) ||
      recv.count != send.count * size_t(process.size)) {
    throw std::runtime_error("allgather: recv must hold " + std::to_string(process.size) +
                             " records of send's size (1 to " +
                             std::to_string(INT_MAX / process.size) + " bytes), got " +
                             std::to_string(send.count) + " and " + std::to_string(recv.count));
  }
  return {"MPI_Allgather of " + std::to_string(send.count) + " bytes", [send, recv] {
            MPI_Allgather(send.data, int(send.count), MPI_BYTE, recv.data, int(send.count),
                          MPI_BYTE, MPI_COMM_WORLD);
          }};
}

Napi::Value allgather(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] { return runSync(info.Env(), prepareAllgather(info)); });
}
Napi::Value allgatherAsync(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&] {
    // Both arrays must outlive the call: keep them in one holder object.
    Napi::Object holder = Napi::Object::New(info.Env());
    holder.Set("send", info[0]);
    holder.Set("recv", info[1]);
    return runAsync(info.Env(), prepareAllgather(info), holder);
  });
}

// watch(label) / unwatch(): puts a blocking call made elsewhere (an NCCL
// collective in the main addon) under the same watchdog.
Napi::Value watch(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    requireInitialized("watch");
    if (!info[0].IsString()) throw std::runtime_error("watch(label) takes a string");
    watchdog.begin(info[0].As<Napi::String>().Utf8Value() + " (call #" +
                   std::to_string(++callCount) + " on this rank)");
    return info.Env().Undefined();
  });
}

Napi::Value unwatch(const Napi::CallbackInfo& info) {
  watchdog.end();
  return info.Env().Undefined();
}

Napi::Object initModule(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, init));
  exports.Set("libraryVersion", Napi::Function::New(env, libraryVersionEntry));
  exports.Set("setTimeout", Napi::Function::New(env, setTimeout));
  exports.Set("finalize", Napi::Function::New(env, finalize));
  exports.Set("abort", Napi::Function::New(env, abortJob));
  exports.Set("allreduce", Napi::Function::New(env, allreduce));
  exports.Set("allreduceAsync", Napi::Function::New(env, allreduceAsync));
  exports.Set("broadcast", Napi::Function::New(env, broadcast));
  exports.Set("broadcastAsync", Napi::Function::New(env, broadcastAsync));
  exports.Set("barrier", Napi::Function::New(env, barrier));
  exports.Set("barrierAsync", Napi::Function::New(env, barrierAsync));
  exports.Set("allgather", Napi::Function::New(env, allgather));
  exports.Set("allgatherAsync", Napi::Function::New(env, allgatherAsync));
  exports.Set("watch", Napi::Function::New(env, watch));
  exports.Set("unwatch", Napi::Function::New(env, unwatch));
  return exports;
}

}  // namespace

NODE_API_MODULE(tera_mpi, initModule)
