// The job machinery shared by every kernel entry: argument readers that name
// the offending argument, the builder that checks each storage's device, length
// and aliasing, and the prepared Job itself. A preparer (one per kernel, in the
// prepare_*.cc files) turns a call's arguments into a Job; kernels.cc runs that
// Job at once (sync entry) or on a libuv worker thread (the *Async entry).
#pragma once

#include <napi.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "binding/storage.h"

namespace tera {
namespace binding {

// What a kernel returns to JavaScript: a number (NaN included, e.g. the sum of a
// tensor holding NaN) or nothing (undefined).
using Result = std::optional<double>;
constexpr std::nullopt_t kNoResult = std::nullopt;

// A validated kernel call: the storages it touches (retained while it runs
// asynchronously) and the work.
struct Job {
  Backend* backend = nullptr;
  std::vector<Storage*> storages;
  std::function<Result()> work;
};

// Reads argument i of a kernel call, throwing an Error that names the kernel
// and the argument when it has the wrong type or range.
class Arguments {
 public:
  Arguments(const Napi::CallbackInfo& info, const char* kernel) : info_(info), kernel_(kernel) {}

  std::string where(size_t i) const;
  // Whether argument i was given (neither null nor undefined).
  bool given(size_t i) const;
  double number(size_t i) const;
  // An integer in [minimum, 2^48].
  int64_t integer(size_t i, int64_t minimum) const;
  bool boolean(size_t i) const;
  std::string string(size_t i) const;
  uint64_t bigUint(size_t i) const;
  // An array of integers, each in [minimum, 2^48].
  std::vector<int64_t> integers(size_t i, int64_t minimum) const;
  // An array of positive integers, each at most 2^48.
  std::vector<int64_t> dims(size_t i) const;
  Storage* storage(size_t i) const;
  // null or undefined give nullptr.
  Storage* optionalStorage(size_t i) const;
  // An array of storages; entries may be null when allowNull.
  std::vector<Storage*> storages(size_t i, bool allowNull) const;

 private:
  const Napi::CallbackInfo& info_;
  const char* kernel_;
};

// Checks that every storage lives on one backend and has the expected length,
// and collects them into the Job.
class JobBuilder {
 public:
  explicit JobBuilder(const char* kernel) : kernel_(kernel) {}

  // The storage's data; nullptr for a null storage. expectedLength < 0 accepts any length.
  float* use(Storage* s, int64_t expectedLength, const std::string& what);
  // Refuses an output that shares memory with one of `inputs` (null entries are skipped).
  void distinct(Storage* out, const std::vector<Storage*>& inputs,
                const std::string& outName = "the output tensor") const;
  // The product of user-given sizes (rows * cols, ...), refused past 2^48 elements
  // before it could wrap around and pass a length check.
  int64_t product(std::initializer_list<int64_t> sizes, const std::string& what) const;
  Job finish(std::function<Result()> work);

 private:
  const char* kernel_;
  Job job_;
};

using Preparer = Job (*)(const Napi::CallbackInfo&);

struct KernelEntry {
  const char* name;
  Preparer prepare;
  bool hasAsync;  // also exported as <name>Async, returning a Promise
};

// The kernel tables, one per family of preparers.
std::vector<KernelEntry> matrixKernels();       // prepare_matrix.cc
std::vector<KernelEntry> tuckerKernels();       // prepare_tucker.cc
std::vector<KernelEntry> elementwiseKernels();  // prepare_elementwise.cc
std::vector<KernelEntry> optimizerKernels();    // prepare_optimizer.cc
std::vector<KernelEntry> distributedKernels();  // prepare_distributed.cc
std::vector<KernelEntry> transformerKernels();  // prepare_transformer.cc

}  // namespace binding
}  // namespace tera
