#include "binding/job.h"

#include "core/errors.h"

namespace tera {
namespace binding {

std::string Arguments::where(size_t i) const {
  return std::string(kernel_) + " argument " + std::to_string(i);
}

bool Arguments::given(size_t i) const { return !info_[i].IsNull() && !info_[i].IsUndefined(); }

double Arguments::number(size_t i) const {
  if (!info_[i].IsNumber()) throw Error(where(i) + " must be a number");
  return info_[i].As<Napi::Number>().DoubleValue();
}

int64_t Arguments::integer(size_t i, int64_t minimum) const {
  const double value = number(i);
  if (value != double(int64_t(value)) || value < double(minimum) || value > double(kMaxElements)) {
    throw Error(where(i) + " must be an integer >= " + std::to_string(minimum) + ", got " +
                info_[i].ToString().Utf8Value());
  }
  return int64_t(value);
}

bool Arguments::boolean(size_t i) const {
  if (!info_[i].IsBoolean()) throw Error(where(i) + " must be a boolean");
  return info_[i].As<Napi::Boolean>().Value();
}

std::string Arguments::string(size_t i) const {
  if (!info_[i].IsString()) throw Error(where(i) + " must be a string");
  return info_[i].As<Napi::String>().Utf8Value();
}

uint64_t Arguments::bigUint(size_t i) const {
  if (!info_[i].IsBigInt()) throw Error(where(i) + " must be a BigInt");
  bool lossless = false;
  const uint64_t value = info_[i].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Error(where(i) + " must fit in an unsigned 64-bit integer");
  return value;
}

std::vector<int64_t> Arguments::integers(size_t i, int64_t minimum) const {
  if (!info_[i].IsArray()) throw Error(where(i) + " must be an array of integers");
  Napi::Array array = info_[i].As<Napi::Array>();
  std::vector<int64_t> out(array.Length());
  for (uint32_t k = 0; k < array.Length(); ++k) {
    Napi::Value v = array.Get(k);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (d != double(int64_t(d)) || d < double(minimum) || d > double(kMaxElements)) {
      throw Error(where(i) + "[" + std::to_string(k) + "] must be " +
                  (minimum == 1 ? std::string("a positive integer")
                                : "an integer >= " + std::to_string(minimum)));
    }
    out[k] = int64_t(d);
  }
  return out;
}

std::vector<int64_t> Arguments::dims(size_t i) const { return integers(i, 1); }

Storage* Arguments::storage(size_t i) const { return Storage::from(info_[i], where(i).c_str()); }

Storage* Arguments::optionalStorage(size_t i) const { return given(i) ? storage(i) : nullptr; }

std::vector<Storage*> Arguments::storages(size_t i, bool allowNull) const {
  if (!info_[i].IsArray()) throw Error(where(i) + " must be an array of tensors");
  Napi::Array array = info_[i].As<Napi::Array>();
  std::vector<Storage*> out(array.Length());
  for (uint32_t k = 0; k < array.Length(); ++k) {
    Napi::Value v = array.Get(k);
    if (allowNull && (v.IsNull() || v.IsUndefined())) continue;
    out[k] = Storage::from(v, (where(i) + "[" + std::to_string(k) + "]").c_str());
  }
  return out;
}

float* JobBuilder::use(Storage* s, int64_t expectedLength, const std::string& what) {
  if (!s) return nullptr;
  if (!job_.backend) {
    job_.backend = &s->backend();
  } else if (job_.backend != &s->backend()) {
    throw Error(std::string(kernel_) + ": " + what + " is on " + s->backend().name() +
                " but the other tensors are on " + job_.backend->name() +
                "; move them to one device first");
  }
  if (expectedLength >= 0 && s->length() != expectedLength) {
    throw Error(std::string(kernel_) + ": " + what + " has " + std::to_string(s->length()) +
                " elements, expected " + std::to_string(expectedLength));
  }
  job_.storages.push_back(s);
  return s->data();
}

void JobBuilder::distinct(Storage* out, const std::vector<Storage*>& inputs,
                          const std::string& outName) const {
  for (Storage* in : inputs) {
    if (out && in == out) {
      throw Error(std::string(kernel_) + ": " + outName + " must not also be an input");
    }
  }
}

int64_t JobBuilder::product(std::initializer_list<int64_t> sizes, const std::string& what) const {
  return checkedProduct(sizes.begin(), int(sizes.size()),
                        (std::string(kernel_) + ": " + what).c_str());
}

Job JobBuilder::finish(std::function<Result()> work) {
  job_.work = std::move(work);
  return std::move(job_);
}

}  // namespace binding
}  // namespace tera
