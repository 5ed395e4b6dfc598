#include "core/shape.h"

#include <algorithm>
#include <cstdio>

#include "core/errors.h"

namespace tera {

int64_t checkedProduct(const int64_t* dims, int count, const char* what) {
  int64_t product = 1;
  for (int i = 0; i < count; ++i) {
    if (dims[i] <= 0) {
      throw Error(std::string(what) + ": dimension " + std::to_string(i) + " is " +
                  std::to_string(dims[i]) + ", but every dimension must be positive");
    }
    if (product > kMaxElements / dims[i]) {
      throw Error(std::string(what) + ": shape " + formatShape(dims, count) +
                  " has more than 2^48 elements");
    }
    product *= dims[i];
  }
  return product;
}

std::string formatShape(const int64_t* dims, int count) {
  std::string text = "[";
  for (int i = 0; i < count; ++i) {
    if (i) text += ", ";
    text += std::to_string(dims[i]);
  }
  return text + "]";
}

std::string indexErrorMessage(const char* kernel, const char* what, float value, const char* unit,
                              int64_t position, const char* kind, int64_t limit) {
  char number[32];
  std::snprintf(number, sizeof number, "%.9g", double(value));
  return std::string(kernel) + ": " + what + " " + number + " at " + unit + " " +
         std::to_string(position) + " is not " + kind + " in [0, " + std::to_string(limit) + ")";
}

TuckerShape TuckerShape::make(const std::vector<int64_t>& modes,
                              const std::vector<int64_t>& ranks) {
  if (modes.empty() || modes.size() > size_t(kMaxOrder)) {
    throw Error("Tucker order must be between 1 and " + std::to_string(kMaxOrder) + ", got " +
                std::to_string(modes.size()));
  }
  if (ranks.size() != modes.size()) {
    throw Error("Tucker problem has " + std::to_string(modes.size()) + " modes but " +
                std::to_string(ranks.size()) + " ranks");
  }
  TuckerShape shape;
  shape.order = int(modes.size());
  for (int n = 0; n < shape.order; ++n) {
    shape.modes[n] = modes[n];
    shape.ranks[n] = ranks[n];
  }
  checkedProduct(shape.modes, shape.order, "Tucker mode sizes");
  checkedProduct(shape.ranks, shape.order, "Tucker ranks (core shape)");
  // Intermediates mix ranks and modes; bound the largest mixture too.
  int64_t widest[kMaxOrder];
  for (int n = 0; n < shape.order; ++n) widest[n] = std::max(modes[n], ranks[n]);
  checkedProduct(widest, shape.order, "Tucker intermediate");
  return shape;
}

int64_t TuckerShape::coreSize() const { return checkedProduct(ranks, order, "core"); }

int64_t TuckerShape::fullSize() const { return checkedProduct(modes, order, "tensor"); }

double TuckerShape::reconstructMultiplyAdds() const {
  double total = 0;
  for (int applied = order - 1; applied >= 0; --applied) {
    double others = 1;
    for (int n = 0; n < order; ++n) {
      if (n != applied) others *= double(n > applied ? modes[n] : ranks[n]);
    }
    total += others * double(modes[applied]) * double(ranks[applied]);
  }
  return total;
}

}  // namespace tera
