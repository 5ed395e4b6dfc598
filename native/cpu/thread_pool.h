// A persistent pool of worker threads for the CPU kernels. One parallel region
// runs at a time; a region started from inside a worker runs serially.
// The thread count also governs OpenBLAS, so "threads" means one thing.
#pragma once

#include <cstdint>
#include <functional>

namespace tera {
namespace cpu {

// body(begin, end, worker) handles items [begin, end); worker is in [0, threads()).
using RangeBody = std::function<void(int64_t begin, int64_t end, int worker)>;

void parallelFor(int64_t count, const RangeBody& body);

int numThreads();
// n <= 0 restores the default: TERA_NUM_THREADS, else all cores.
void setNumThreads(int n);
int defaultNumThreads();

}  // namespace cpu
}  // namespace tera
