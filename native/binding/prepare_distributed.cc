// Preparers of the data-parallel helpers (lib/distributed): packing gradients
// into one flat bucket and back, and the NCCL collectives on CUDA tensors.
#include "binding/errors.h"
#include "binding/job.h"
#include "core/errors.h"
#include "distributed/nccl_comm.h"

namespace tera {
namespace binding {
namespace {

// packInto(bucket, sources, offsets, scale): bucket[offsets[i] ...] = scale * sources[i];
// unpackFrom(bucket, targets, offsets, scale): targets[i] = scale * bucket[offsets[i] ...].
// One flat bucket per collective instead of one call per tensor. The bucket is
// a tensor on the tensors' device, or for CPU tensors a Float32Array: the host
// buffer MPI reduces in place (these kernels are synchronous, so JavaScript
// holds the array while they run).
Job prepareBucket(const Napi::CallbackInfo& info, const char* kernel, bool pack) {
  Arguments args(info, kernel);
  const std::vector<Storage*> tensors = args.storages(1, false);
  const std::vector<int64_t> offsets = args.integers(2, 0);
  const float scale = float(args.number(3));
  if (tensors.empty()) throw Error(std::string(kernel) + ": no tensors");
  if (offsets.size() != tensors.size()) {
    throw Error(std::string(kernel) + ": " + std::to_string(tensors.size()) + " tensors but " +
                std::to_string(offsets.size()) + " offsets");
  }
  JobBuilder job(kernel);
  float* pb = nullptr;
  int64_t bucketLength = 0;
  if (info[0].IsTypedArray()) {
    if (info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      throw Error(std::string(kernel) + ": the bucket must be a tensor or a Float32Array");
    }
    if (tensors[0]->backend().device() != Device::Cpu) {
      throw Error(std::string(kernel) +
                  ": a Float32Array bucket takes CPU tensors; tensor 0 is on " +
                  tensors[0]->backend().name());
    }
    Napi::Float32Array host = info[0].As<Napi::Float32Array>();
    pb = host.Data();
    bucketLength = int64_t(host.ElementLength());
  } else {
    Storage* bucket = args.storage(0);
    job.distinct(bucket, tensors);
    pb = job.use(bucket, -1, "bucket");
    bucketLength = bucket->length();
  }
  std::vector<std::pair<float*, int64_t>> segments;  // (tensor data, count), by offset
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = (pack ? "sources[" : "targets[") + std::to_string(i) + "]";
    float* p = job.use(tensors[i], -1, name);
    const int64_t count = tensors[i]->length();
    if (offsets[i] > bucketLength - count) {
      throw Error(std::string(kernel) + ": " + name + " (" + std::to_string(count) +
                  " elements at offset " + std::to_string(offsets[i]) +
                  ") does not fit in the bucket of " + std::to_string(bucketLength));
    }
    segments.emplace_back(p, count);
  }
  Backend* backend = &tensors[0]->backend();
  return job.finish([=] {
    for (size_t i = 0; i < segments.size(); ++i) {
      float* slot = pb + offsets[i];
      float* dst = pack ? slot : segments[i].first;
      const float* src = pack ? segments[i].first : slot;
      if (scale == 1.0f) {
        backend->copy(dst, src, segments[i].second);
      } else {
        backend->axpby(dst, src, segments[i].second, scale, 0.0f);
      }
    }
    return kNoResult;
  });
}

Job preparePackInto(const Napi::CallbackInfo& info) {
  return prepareBucket(info, "packInto", true);
}
Job prepareUnpackFrom(const Napi::CallbackInfo& info) {
  return prepareBucket(info, "unpackFrom", false);
}

// The NCCL collectives work in place on one CUDA tensor (native/distributed/nccl_comm.h).
struct NcclOperand {
  Backend* backend;
  float* data;
  int64_t count;
  double timeoutSeconds;
};

NcclOperand useNcclOperand(JobBuilder& job, const Arguments& args, const char* kernel,
                           size_t timeoutArg) {
  Storage* data = args.storage(0);
  if (data->backend().device() != Device::Cuda) {
    throw Error(std::string(kernel) + ": NCCL moves CUDA tensors; this one is on " +
                data->backend().name());
  }
  const double timeout = args.number(timeoutArg);
  if (!(timeout > 0)) throw Error(std::string(kernel) + ": the timeout must be positive");
  return {&data->backend(), job.use(data, -1, "data"), data->length(), timeout};
}

distributed::ReduceOp parseReduceOp(const std::string& name) {
  if (name == "sum") return distributed::ReduceOp::Sum;
  if (name == "max") return distributed::ReduceOp::Max;
  if (name == "min") return distributed::ReduceOp::Min;
  throw Error("ncclAllReduce: op must be 'sum', 'max' or 'min', got '" + name + "'");
}

Job prepareNcclAllReduce(const Napi::CallbackInfo& info) {
  Arguments args(info, "ncclAllReduce");
  const std::string name = args.string(1);
  const distributed::ReduceOp op = parseReduceOp(name);
  JobBuilder job("ncclAllReduce");
  const NcclOperand x = useNcclOperand(job, args, "ncclAllReduce", 2);
  return job.finish([=] {
    distributed::ncclAllReduce(*x.backend, x.data, x.count, op, x.timeoutSeconds);
    return kNoResult;
  });
}

Job prepareNcclBroadcast(const Napi::CallbackInfo& info) {
  Arguments args(info, "ncclBroadcast");
  const int root = int(args.integer(1, 0));
  JobBuilder job("ncclBroadcast");
  const NcclOperand x = useNcclOperand(job, args, "ncclBroadcast", 2);
  return job.finish([=] {
    distributed::ncclBroadcast(*x.backend, x.data, x.count, root, x.timeoutSeconds);
    return kNoResult;
  });
}

}  // namespace

std::vector<KernelEntry> distributedKernels() {
  return {
      {"packInto", preparePackInto, false},
      {"unpackFrom", prepareUnpackFrom, false},
      {"ncclAllReduce", prepareNcclAllReduce, true},
      {"ncclBroadcast", prepareNcclBroadcast, true},
  };
}

}  // namespace binding
}  // namespace tera
