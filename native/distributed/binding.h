// N-API entries of distributed training that are not kernels: NCCL's status,
// unique id, device bus id, communicator set-up and tear-down. (The bucket
// packing and the NCCL collectives are kernels, prepared in binding/prepare_distributed.cc.)
#pragma once

#include <napi.h>

namespace tera {
namespace distributed {

void registerDistributed(Napi::Env env, Napi::Object exports);

}  // namespace distributed
}  // namespace tera
