#include "cpu/thread_pool.h"

#include <cblas.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace tera {
namespace cpu {
namespace {

thread_local bool insideWorker = false;

class ThreadPool {
 public:
  ThreadPool() { resize(defaultNumThreads()); }
  ~ThreadPool() { stopWorkers(); }

  int size() const { return threads_; }

  void resize(int threads) {
    std::lock_guard<std::mutex> regionLock(regionMutex_);
    stopWorkers();
    threads_ = std::max(1, threads);
    stopping_ = false;
    // New workers must not mistake the last region (already finished) for new work.
    for (int w = 1; w < threads_; ++w) {
      workers_.emplace_back([this, w, seen = generation_] { workerLoop(w, seen); });
    }
    openblas_set_num_threads(threads_);
  }

  void run(int64_t count, const RangeBody& body) {
    if (count <= 0) return;
    if (insideWorker || threads_ == 1 || count == 1) {
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
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      runShare(worker);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  void stopWorkers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
    workers_.clear();
  }

  std::mutex regionMutex_;  // one parallel region (or resize) at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const RangeBody* body_ = nullptr;
  int64_t count_ = 0;
  int pending_ = 0;
  int threads_ = 1;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

ThreadPool& pool() {
  static ThreadPool instance;
  return instance;
}

}  // namespace

int defaultNumThreads() {
  if (const char* env = std::getenv("TERA_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

void parallelFor(int64_t count, const RangeBody& body) { pool().run(count, body); }

int numThreads() { return pool().size(); }

void setNumThreads(int n) { pool().resize(n > 0 ? n : defaultNumThreads()); }

}  // namespace cpu
}  // namespace tera
