// The NCCL communicator of a CUDA build; see nccl_comm.h.
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include "core/errors.h"
#include "cuda/cuda_backend.h"
#include "distributed/nccl_comm.h"
#include "distributed/nccl_loader.h"

namespace tera {
namespace distributed {
namespace {

using Clock = std::chrono::steady_clock;

// The CUDA backend computes on device 0 of the devices this process sees.
constexpr int kDevice = 0;

struct Communicator {
  std::mutex mutex;
  NcclComm comm = nullptr;
  cudaStream_t stream = nullptr;
  bool aborted = false;
};

Communicator& communicator() {
  static Communicator instance;
  return instance;
}

const NcclApi& requireNccl(const char* what) {
  std::string error;
  const NcclApi* api = loadNccl(&error);
  if (!api) throw Error(std::string(what) + ": " + error);
  return *api;
}

void requireDevice(const char* what) {
  std::string reason;
  if (!cudaBackend(&reason)) {
    throw Error(std::string(what) + ": NCCL needs a usable CUDA device, but " + reason);
  }
  TERA_CUDA_CHECK(cudaSetDevice(kDevice));
}

std::string describe(const NcclApi& api, int result) {
  return std::string(api.getErrorString(result)) + " (ncclResult_t " + std::to_string(result) + ")";
}

// Frees the communicator after a failure; its collectives stop at once.
void abortCommunicator(const NcclApi& api, Communicator& c) {
  api.commAbort(c.comm);
  c.comm = nullptr;
  c.aborted = true;
}

// Returns when the stream's work is done; a peer's failure (reported through
// ncclCommGetAsyncError), a device error or the timeout abort the communicator.
void waitFor(const NcclApi& api, Communicator& c, const std::string& what, double timeoutSeconds) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeoutSeconds));
  for (int polls = 0;; ++polls) {
    const cudaError_t state = cudaStreamQuery(c.stream);
    if (state == cudaSuccess) return;
    if (state != cudaErrorNotReady) {
      cudaGetLastError();
      abortCommunicator(api, c);
      throw Error(what + " failed on the device: " + cudaGetErrorString(state) +
                  "; the NCCL communicator was aborted");
    }
    int asyncError = kNcclSuccess;
    api.commGetAsyncError(c.comm, &asyncError);
    if (asyncError != kNcclSuccess && asyncError != kNcclInProgress) {
      abortCommunicator(api, c);
      throw Error(what + " failed: " + describe(api, asyncError) +
                  " (another rank failed or the network did); the NCCL communicator was aborted");
    }
    if (Clock::now() >= deadline) {
      abortCommunicator(api, c);
      throw Error(what + " did not complete within " + std::to_string(timeoutSeconds) +
                  " s: another rank is dead, stuck or in a different collective; the NCCL "
                  "communicator was aborted");
    }
    // Spin briefly (small buckets finish in microseconds), then poll gently.
    if (polls < 2000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
}

// Runs one collective on our stream after the backend's queued work.
void collective(Backend& backend, const std::string& what, double timeoutSeconds,
                const std::function<int(const NcclApi&, NcclComm, cudaStream_t)>& enqueue) {
  Communicator& c = communicator();
  std::lock_guard<std::mutex> lock(c.mutex);
  const NcclApi& api = requireNccl(what.c_str());
  if (!c.comm) {
    throw Error(what + ": NCCL is not initialised" +
                (c.aborted ? " (its communicator was aborted after an earlier failure)"
                           : " (tera.distributed.init({ engine: 'nccl' }) sets it up)"));
  }
  if (backend.device() != Device::Cuda) throw Error(what + ": NCCL moves CUDA tensors only");
  TERA_CUDA_CHECK(cudaSetDevice(kDevice));
  backend.synchronize();
  const int result = enqueue(api, c.comm, c.stream);
  if (result != kNcclSuccess) throw Error(what + " failed: " + describe(api, result));
  waitFor(api, c, what, timeoutSeconds);
}

int ncclOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::Max:
      return kNcclMax;
    case ReduceOp::Min:
      return kNcclMin;
    default:
      return kNcclSum;
  }
}

}  // namespace

NcclStatus ncclStatus() {
  NcclStatus status;
  std::string reason;
  if (!cudaBackend(&reason)) {
    status.reason = "no usable CUDA device: " + reason;
    return status;
  }
  const NcclApi* api = loadNccl(&reason);
  if (!api) {
    status.reason = reason;
    return status;
  }
  status.available = true;
  status.library = api->library;
  status.version = api->version;
  return status;
}

std::string ncclUniqueId() {
  const NcclApi& api = requireNccl("ncclUniqueId");
  NcclUniqueId id;
  const int result = api.getUniqueId(&id);
  if (result != kNcclSuccess) throw Error("ncclGetUniqueId failed: " + describe(api, result));
  return std::string(id.internal, sizeof id.internal);
}

std::string ncclDeviceBusId() {
  requireDevice("ncclDeviceBusId");
  char busId[64] = {};
  TERA_CUDA_CHECK(cudaDeviceGetPCIBusId(busId, int(sizeof busId), kDevice));
  return busId;
}

void ncclInit(const std::string& uniqueId, int rank, int size) {
  const NcclApi& api = requireNccl("ncclInit");
  requireDevice("ncclInit");
  if (uniqueId.size() != size_t(kNcclUniqueIdBytes)) {
    throw Error("ncclInit: the unique id must have " + std::to_string(kNcclUniqueIdBytes) +
                " bytes");
  }
  if (size < 1 || rank < 0 || rank >= size) {
    throw Error("ncclInit: rank " + std::to_string(rank) + " is not in [0, " +
                std::to_string(size) + ")");
  }
  Communicator& c = communicator();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.comm) throw Error("ncclInit: NCCL is already initialised in this process");
  if (!c.stream) TERA_CUDA_CHECK(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
  NcclUniqueId id;
  std::memcpy(id.internal, uniqueId.data(), sizeof id.internal);
  NcclComm comm = nullptr;
  const int result = api.commInitRank(&comm, size, id, rank);
  if (result != kNcclSuccess) {
    throw Error("ncclCommInitRank failed on rank " + std::to_string(rank) + ": " +
                describe(api, result));
  }
  c.comm = comm;
  c.aborted = false;
}

void ncclDestroy() {
  Communicator& c = communicator();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (!c.comm) return;
  const NcclApi& api = requireNccl("ncclDestroy");
  api.commDestroy(c.comm);
  c.comm = nullptr;
}

void ncclAllReduce(Backend& backend, float* data, int64_t count, ReduceOp op,
                   double timeoutSeconds) {
  collective(backend, "ncclAllReduce of " + std::to_string(count * 4) + " bytes", timeoutSeconds,
             [&](const NcclApi& api, NcclComm comm, cudaStream_t stream) {
               return api.allReduce(data, data, size_t(count), kNcclFloat32, ncclOp(op), comm,
                                    stream);
             });
}

void ncclBroadcast(Backend& backend, float* data, int64_t count, int root, double timeoutSeconds) {
  collective(
      backend,
      "ncclBroadcast of " + std::to_string(count * 4) + " bytes from rank " + std::to_string(root),
      timeoutSeconds, [&](const NcclApi& api, NcclComm comm, cudaStream_t stream) {
        return api.broadcast(data, data, size_t(count), kNcclFloat32, root, comm, stream);
      });
}

}  // namespace distributed
}  // namespace tera
