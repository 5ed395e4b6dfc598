// cuBLAS loaded at run time with dlopen, so the binary neither links nor ships
// it: a machine with a GPU almost always has a cuBLAS somewhere (the CUDA
// toolkit, or PyTorch's nvidia packages), and a machine without one still loads
// the library. Only the few entry points we call are declared, with our own
// prototypes that mirror cublas_api.h (no cuBLAS headers are needed to build).
#pragma once

#include <string>

namespace tera {
namespace cuda {

// Opaque cuBLAS handle and the enum values we use (cublas_api.h).
struct CublasContext;
using CublasHandle = CublasContext*;
constexpr int kCublasStatusSuccess = 0;
constexpr int kCublasOpN = 0;
constexpr int kCublasOpT = 1;

struct CublasApi {
  int (*create)(CublasHandle* handle) = nullptr;
  int (*destroy)(CublasHandle handle) = nullptr;
  // The stream is a cudaStream_t, passed as void* so this header needs no CUDA.
  int (*setStream)(CublasHandle handle, void* stream) = nullptr;
  int (*sgemm)(CublasHandle handle, int transa, int transb, int m, int n, int k, const float* alpha,
               const float* a, int lda, const float* b, int ldb, const float* beta, float* c,
               int ldc) = nullptr;
  int (*sgemmStridedBatched)(CublasHandle handle, int transa, int transb, int m, int n, int k,
                             const float* alpha, const float* a, int lda, long long strideA,
                             const float* b, int ldb, long long strideB, const float* beta,
                             float* c, int ldc, long long strideC, int batchCount) = nullptr;
  std::string library;  // the file that was loaded
};

// Loads cuBLAS once (thread-safe) and returns it, or null with `error` listing
// every file tried and dlerror's text for each. Search order: the file named by
// TERA_CUBLAS_PATH, then libcublas.so.13, .12, .11 and libcublas.so on the
// dynamic loader's path.
const CublasApi* loadCublas(std::string* error);

// The name of a cublasStatus_t value, for error messages.
const char* cublasStatusName(int status);

}  // namespace cuda
}  // namespace tera
