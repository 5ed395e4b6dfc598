// Shapes and sizes shared by every backend: overflow-checked products, the
// (modes, ranks) description of a Tucker problem and the bad-index message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tera {

constexpr int kMaxOrder = 8;

// Largest element count we accept: float counts must stay exact in a JS number
// and byte counts must fit in int64.
constexpr int64_t kMaxElements = int64_t(1) << 48;

// Product of dims; throws an Error naming `what` if a dim is not positive or the
// product exceeds kMaxElements.
int64_t checkedProduct(const int64_t* dims, int count, const char* what);

std::string formatShape(const int64_t* dims, int count);

// "<kernel>: <what> <value> at <unit> <position> is not <kind> in [0, <limit>)",
// the message of every kernel that refuses a bad index (labels, token ids).
std::string indexErrorMessage(const char* kernel, const char* what, float value, const char* unit,
                              int64_t position, const char* kind, int64_t limit);

// X = G x_1 U_1 ... x_N U_N with U_n of shape [modes[n], ranks[n]] and G of
// shape ranks[0..order).
struct TuckerShape {
  int order = 0;
  int64_t modes[kMaxOrder] = {};
  int64_t ranks[kMaxOrder] = {};

  static TuckerShape make(const std::vector<int64_t>& modes, const std::vector<int64_t>& ranks);
  int64_t coreSize() const;
  int64_t fullSize() const;
  // Multiply-adds of the successive mode products, applied last mode first.
  double reconstructMultiplyAdds() const;
};

}  // namespace tera
