// A persistent pool of worker threads for the CPU kernels. One parallel region
// runs at a time; a region started from inside a worker runs serially.
// The thread count also governs OpenBLAS, so "threads" means one thing.
#pragma once

#include <cstdint>
#include <functional>

namespace tera {
namespace cpu {

// Most threads setNumThreads and TERA_NUM_THREADS accept.
constexpr int kMaxThreads = 1024;

// body(begin, end, worker) handles items [begin, end); worker is in [0, threads()).
using RangeBody = std::function<void(int64_t begin, int64_t end, int worker)>;

// The first call (or numThreads()) starts the default number of threads; it
// throws if TERA_NUM_THREADS is invalid or the threads cannot be started.
void parallelFor(int64_t count, const RangeBody& body);

int numThreads();
// n in [1, kMaxThreads], or 0 for the default. Takes effect only once every
// thread exists: if one cannot be started, this throws and the pool keeps its
// previous threads.
void setNumThreads(int n);
// TERA_NUM_THREADS when set (an integer in [1, kMaxThreads], else this throws),
// otherwise the number of cores.
int defaultNumThreads();

}  // namespace cpu
}  // namespace tera
