// Every failure inside the native core is a tera::Error whose message names the
// problem; the N-API binding turns it into a JavaScript Error. No code path aborts.
#pragma once

#include <stdexcept>
#include <string>

namespace tera {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace tera
