// NCCL loaded at run time with dlopen, as cuBLAS is: the binary neither links
// nor ships it, and GPU machines have libnccl.so.2 from their CUDA or PyTorch
// install. NCCL's C ABI has been stable across 2.x, so the few entry points we
// call are declared here with our own prototypes mirroring nccl.h (no NCCL
// headers are needed to build). Enums travel as int (their C ABI), the stream
// as void* (a cudaStream_t) so this header needs no CUDA.
#pragma once

#include <string>

namespace tera {
namespace distributed {

constexpr int kNcclUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct NcclUniqueId {
  char internal[kNcclUniqueIdBytes];
};
struct NcclCommOpaque;  // struct ncclComm
using NcclComm = NcclCommOpaque*;

// ncclResult_t values we test for.
constexpr int kNcclSuccess = 0;
constexpr int kNcclInProgress = 7;
// ncclDataType_t ncclFloat32, and ncclRedOp_t values.
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;
constexpr int kNcclMax = 2;
constexpr int kNcclMin = 3;

struct NcclApi {
  int (*getVersion)(int* version) = nullptr;
  int (*getUniqueId)(NcclUniqueId* id) = nullptr;
  // The id is passed by value, as in nccl.h.
  int (*commInitRank)(NcclComm* comm, int nranks, NcclUniqueId id, int rank) = nullptr;
  int (*commDestroy)(NcclComm comm) = nullptr;
  int (*commAbort)(NcclComm comm) = nullptr;
  int (*commGetAsyncError)(NcclComm comm, int* asyncError) = nullptr;
  const char* (*getErrorString)(int result) = nullptr;
  int (*allReduce)(const void* send, void* recv, size_t count, int datatype, int op, NcclComm comm,
                   void* stream) = nullptr;
  int (*broadcast)(const void* send, void* recv, size_t count, int datatype, int root,
                   NcclComm comm, void* stream) = nullptr;
  std::string library;  // the file that was loaded
  int version = 0;      // as ncclGetVersion reports it, e.g. 22105 for 2.21.5
};

// Loads NCCL once (thread-safe) and returns it, or null with `error` listing
// every file tried with its error. Search order: TERA_NCCL_PATH, then
// libnccl.so.2 and libnccl.so on the dynamic loader's path.
const NcclApi* loadNccl(std::string* error);

}  // namespace distributed
}  // namespace tera
