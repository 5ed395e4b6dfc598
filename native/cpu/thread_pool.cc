#include "cpu/thread_pool.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/errors.h"

namespace tera {
namespace cpu {
namespace {

thread_local bool insideWorker = false;

class ThreadPool {
 public:
  int size() {
    configure();
    return threads_;
  }

  void resize(int threads) {
    std::lock_guard<std::mutex> regionLock(regionMutex_);
    resizeLocked(threads);
  }

  void run(int64_t count, const RangeBody& body) {
    if (count <= 0) return;
    if (insideWorker) {
      body(0, count, 0);
      return;
    }
    configure();
    if (threads_ == 1 || count == 1) {
      body(0, count, 0);
      return;
    }
    std::lock_guard<std::mutex> regionLock(regionMutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      count_ = count;
      pending_ = threads_ - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    runShare(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    body_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Starts the default number of threads on first use; retried on later uses
  // if it failed (for instance an invalid TERA_NUM_THREADS).
  void configure() {
    if (configured_.load(std::memory_order_acquire)) return;
    std::lock_guard<std::mutex> regionLock(regionMutex_);
    if (!configured_.load(std::memory_order_relaxed)) resizeLocked(defaultNumThreads());
  }

  // Grows by starting workers [threads_, threads) or shrinks by stopping the
  // ones past `threads`; the workers below both counts keep running, so a
  // failed start only has to stop the workers it added. threads_ changes only
  // once every worker it counts exists.
  void resizeLocked(int threads) {
    const int previous = threads_;
    if (threads < previous) stopWorkersFrom(threads);
    if (threads > previous) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        limit_ = threads;
      }
      try {
        for (int w = previous; w < threads; ++w) {
          workers_.emplace_back([this, w, seen = generation_] { workerLoop(w, seen); });
        }
      } catch (const std::exception& e) {
        const int failed = int(workers_.size()) + 2;  // counting the calling thread as 1
        stopWorkersFrom(previous);
        throw Error("could not start CPU thread " + std::to_string(failed) + " of " +
                    std::to_string(threads) + " (" + e.what() + "); still using " +
                    std::to_string(previous) + (previous == 1 ? " thread" : " threads"));
      }
    }
    threads_ = threads;
    configured_.store(true, std::memory_order_release);
    openblas_set_num_threads(threads);
  }

  // Stops and joins workers `first` and above (worker 0 is the calling thread).
  void stopWorkersFrom(int first) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      limit_ = first;
    }
    wake_.notify_all();
    const size_t keep = size_t(std::max(first - 1, 0));
    for (size_t i = keep; i < workers_.size(); ++i) workers_[i].join();
    workers_.resize(keep);
  }

  void runShare(int worker) {
    int64_t begin = count_ * worker / threads_;
    int64_t end = count_ * (worker + 1) / threads_;
    if (begin >= end) return;
    insideWorker = true;
    try {
      (*body_)(begin, end, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    insideWorker = false;
  }

  void workerLoop(int worker, uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return worker >= limit_ || generation_ != seen; });
        if (worker >= limit_) return;
        seen = generation_;
      }
      runShare(worker);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex regionMutex_;  // one parallel region (or resize) at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;  // workers_[i] is worker i + 1
  const RangeBody* body_ = nullptr;
  int64_t count_ = 0;
  int pending_ = 0;
  std::atomic<int> threads_{1};  // participants of a region, the calling thread included
  int limit_ = 1;                // workers at or past this index leave their loop
  uint64_t generation_ = 0;
  std::atomic<bool> configured_{false};
  std::exception_ptr error_;
};

// Never destroyed: at process exit a worker environment's kernel may still be
// running on a libuv thread, and joining or destroying the pool under it would
// hang or crash the exit.
ThreadPool& pool() {
  static ThreadPool* instance = new ThreadPool();
  return *instance;
}

}  // namespace

int defaultNumThreads() {
  const char* env = std::getenv("TERA_NUM_THREADS");
  if (env && *env) {
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(env, &end, 10);
    const bool digitsOnly = std::all_of(env, static_cast<const char*>(end),
                                        [](char c) { return c >= '0' && c <= '9'; });
    if (*end != '\0' || !digitsOnly || errno == ERANGE || n < 1 || n > kMaxThreads) {
      throw Error("TERA_NUM_THREADS='" + std::string(env) + "' is not an integer in [1, " +
                  std::to_string(kMaxThreads) + "]; set it to a thread count or unset it");
    }
    return int(n);
  }
  return int(std::clamp(std::thread::hardware_concurrency(), 1u, unsigned(kMaxThreads)));
}

void parallelFor(int64_t count, const RangeBody& body) { pool().run(count, body); }

int numThreads() { return pool().size(); }

void setNumThreads(int n) {
  if (n < 0 || n > kMaxThreads) {
    throw Error("setNumThreads: " + std::to_string(n) + " is not in [0, " +
                std::to_string(kMaxThreads) + "]");
  }
  pool().resize(n > 0 ? n : defaultNumThreads());
}

}  // namespace cpu
}  // namespace tera
