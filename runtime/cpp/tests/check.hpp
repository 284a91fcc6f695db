// A minimal check harness for CTest executables: CHECK records a failure with its line and goes on;
// main returns finish(), non-zero when anything failed. 77 = skipped (CTest's SKIP_RETURN_CODE).
#pragma once
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

namespace check {
inline int failures = 0;
inline void fail(const char* file, int line, const std::string& what) {
  ++failures;
  std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
}
inline int finish(const char* name) {
  std::printf("%s: %s\n", name, failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
inline std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}
}  // namespace check

#define CHECK(cond) \
  do { if (!(cond)) check::fail(__FILE__, __LINE__, #cond); } while (0)
#define CHECK_EQ(a, b) \
  do { auto _a = (a); auto _b = (b); if (!(_a == _b)) { std::ostringstream _s; _s << #a " == " #b ": " << _a << " vs " << _b; check::fail(__FILE__, __LINE__, _s.str()); } } while (0)
