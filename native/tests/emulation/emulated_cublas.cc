// The cuBLAS stand-in of the host emulation: loadCublas returns the same table
// of entry points as cublas_loader.cc, implemented with OpenBLAS in cuBLAS's
// column-major convention, with cuBLAS's argument checks and a check that every
// matrix lies in device memory (OpenBLAS is not instrumented by the sanitizers).
// GEMM itself is not our kernel; this lets the backend's GEMM paths run.
#include <cblas.h>

#include <algorithm>

#include "cuda/cublas_loader.h"
#include "tests/emulation/device_runtime.h"

namespace tera {
namespace cuda {

struct CublasContext {};

namespace {

constexpr int kStatusNotInitialized = 1;
constexpr int kStatusInvalidValue = 7;

CublasContext context;

int create(CublasHandle* handle) {
  *handle = &context;
  return kCublasStatusSuccess;
}

int destroy(CublasHandle handle) {
  return handle == &context ? kCublasStatusSuccess : kStatusNotInitialized;
}

int setStream(CublasHandle handle, void*) {
  return handle == &context ? kCublasStatusSuccess : kStatusNotInitialized;
}

// A rows x cols column-major matrix with leading dimension ld, in device memory.
bool inDevice(const float* p, int rows, int cols, int ld) {
  if (rows == 0 || cols == 0) return true;
  const size_t floats = size_t(ld) * size_t(cols - 1) + size_t(rows);
  return emu::isDeviceRange(p, floats * sizeof(float));
}

int checkGemm(int transa, int transb, int m, int n, int k, int lda, int ldb, int ldc) {
  const bool ta = transa == kCublasOpT, tb = transb == kCublasOpT;
  if ((transa != kCublasOpN && !ta) || (transb != kCublasOpN && !tb) || m < 0 || n < 0 || k < 0 ||
      lda < std::max(1, ta ? k : m) || ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m)) {
    return kStatusInvalidValue;
  }
  return kCublasStatusSuccess;
}

int gemmOne(int transa, int transb, int m, int n, int k, float alpha, const float* a, int lda,
            const float* b, int ldb, float beta, float* c, int ldc) {
  const bool ta = transa == kCublasOpT, tb = transb == kCublasOpT;
  if (!inDevice(a, ta ? k : m, ta ? m : k, lda) || !inDevice(b, tb ? n : k, tb ? k : n, ldb) ||
      !inDevice(c, m, n, ldc)) {
    emu::fault("cuBLAS GEMM operand outside device memory");
  }
  if (m == 0 || n == 0) return kCublasStatusSuccess;
  cblas_sgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, alpha, a, lda, b, ldb, beta, c, ldc);
  return kCublasStatusSuccess;
}

int sgemm(CublasHandle handle, int transa, int transb, int m, int n, int k, const float* alpha,
          const float* a, int lda, const float* b, int ldb, const float* beta, float* c, int ldc) {
  if (handle != &context) return kStatusNotInitialized;
  const int status = checkGemm(transa, transb, m, n, k, lda, ldb, ldc);
  if (status != kCublasStatusSuccess) return status;
  return gemmOne(transa, transb, m, n, k, *alpha, a, lda, b, ldb, *beta, c, ldc);
}

int sgemmStridedBatched(CublasHandle handle, int transa, int transb, int m, int n, int k,
                        const float* alpha, const float* a, int lda, long long strideA,
                        const float* b, int ldb, long long strideB, const float* beta, float* c,
                        int ldc, long long strideC, int batchCount) {
  if (handle != &context) return kStatusNotInitialized;
  const int status = checkGemm(transa, transb, m, n, k, lda, ldb, ldc);
  if (status != kCublasStatusSuccess) return status;
  if (batchCount < 0) return kStatusInvalidValue;
  for (int i = 0; i < batchCount; ++i) {
    gemmOne(transa, transb, m, n, k, *alpha, a + i * strideA, lda, b + i * strideB, ldb, *beta,
            c + i * strideC, ldc);
  }
  return kCublasStatusSuccess;
}

}  // namespace

const CublasApi* loadCublas(std::string*) {
  static const CublasApi api = [] {
    CublasApi table;
    table.create = create;
    table.destroy = destroy;
    table.setStream = setStream;
    table.sgemm = sgemm;
    table.sgemmStridedBatched = sgemmStridedBatched;
    table.library = "OpenBLAS (host emulation of cuBLAS)";
    return table;
  }();
  return &api;
}

const char* cublasStatusName(int status) {
  switch (status) {
    case kCublasStatusSuccess:
      return "CUBLAS_STATUS_SUCCESS";
    case kStatusNotInitialized:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case kStatusInvalidValue:
      return "CUBLAS_STATUS_INVALID_VALUE";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

}  // namespace cuda
}  // namespace tera
