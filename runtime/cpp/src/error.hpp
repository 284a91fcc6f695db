// The library's one exception type: a status code and a one-line message, turned into
// restr_status + restr_last_error() at the C boundary (c_api.cpp).
#pragma once
#include <stdexcept>
#include <string>

#include "restr/restr_runtime.h"

namespace restr_impl {

class Error : public std::runtime_error {
 public:
  Error(restr_status code, const std::string& message) : std::runtime_error(message), code_(code) {}
  restr_status code() const noexcept { return code_; }

 private:
  restr_status code_;
};

[[noreturn]] inline void fail(restr_status code, const std::string& message) { throw Error(code, message); }

}  // namespace restr_impl
