// The process's NCCL communicator: GPU tensors are all-reduced and broadcast
// on the device, never copied through the host. lib/distributed bootstraps it:
// rank 0 makes the unique id, MPI broadcasts it, every rank calls ncclInit.
// Implemented in nccl_comm.cu (CUDA builds) and nccl_disabled.cc (CPU-only
// builds, where every call explains that the binary has no CUDA).
//
// Streams: collectives run on a stream of our own. Before each one we wait for
// the CUDA backend's queued kernels (Backend::synchronize), and each returns
// only when the collective has finished, so ordering with the backend's stream
// holds without sharing it.
//
// Failure: waiting polls the stream and ncclCommGetAsyncError. A failed peer
// (NCCL reports an async error) or a collective still running after the
// timeout aborts the communicator (ncclCommAbort) and throws; lib/ then ends
// the whole job through MPI_Abort, since the ranks no longer agree.
#pragma once

#include <cstdint>
#include <string>

#include "core/backend.h"

namespace tera {
namespace distributed {

struct NcclStatus {
  bool available = false;
  std::string reason;   // why not, when not available
  std::string library;  // the libnccl file loaded
  int version = 0;      // ncclGetVersion's code
};

// Whether NCCL and a CUDA device are usable here (loads NCCL on first call).
NcclStatus ncclStatus();

// A fresh unique id (kNcclUniqueIdBytes bytes); rank 0 makes it.
std::string ncclUniqueId();

// The PCI bus id of the GPU this process computes on (device 0 of the devices
// it sees), so lib/ can refuse two ranks sharing one GPU with a clear message.
std::string ncclDeviceBusId();

// Joins the communicator: blocks until all `size` ranks have called it.
void ncclInit(const std::string& uniqueId, int rank, int size);
void ncclDestroy();

enum class ReduceOp { Sum, Max, Min };

// In place, on device memory of the CUDA backend.
void ncclAllReduce(Backend& backend, float* data, int64_t count, ReduceOp op,
                   double timeoutSeconds);
void ncclBroadcast(Backend& backend, float* data, int64_t count, int root, double timeoutSeconds);

}  // namespace distributed
}  // namespace tera
