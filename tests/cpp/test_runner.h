// A tiny self-contained test runner for the C++ tests: each TEST_CASE registers
// itself (from any translation unit); main, defined in the one translation unit
// that defines TORCHEXT_TEST_MAIN before including this, runs them all and
// reports every failure.
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace torchext_test {

inline std::vector<std::pair<std::string, std::function<void()>>>& registry() {
  static std::vector<std::pair<std::string, std::function<void()>>> cases;
  return cases;
}

struct Register {
  Register(const char* name, std::function<void()> body) {
    registry().emplace_back(name, std::move(body));
  }
};

struct Failure {
  std::string message;
};

inline bool close(const torch::Tensor& a, const torch::Tensor& b, double rtol = 1e-12,
                  double atol = 1e-12) {
  return a.sizes() == b.sizes() && torch::allclose(a, b, rtol, atol);
}

inline const std::vector<int64_t> kSeedSizes = {20, 30, 30, 40};  // the walk-through's network

}  // namespace torchext_test

#define TEST_CASE(name)                                       \
  void name();                                                \
  const torchext_test::Register register_##name(#name, name); \
  void name()

#define EXPECT(cond)                                                  \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::ostringstream message_;                                    \
      message_ << __FILE__ << ":" << __LINE__ << ": expected " #cond; \
      throw torchext_test::Failure{message_.str()};                   \
    }                                                                 \
  } while (0)

// `statement` must raise c10::Error whose message contains `text`.
#define EXPECT_ERROR(statement, text)                                                      \
  do {                                                                                     \
    bool raised_ = false;                                                                  \
    try {                                                                                  \
      statement;                                                                           \
    } catch (const c10::Error& e_) {                                                       \
      raised_ = true;                                                                      \
      if (std::string(e_.what()).find(text) == std::string::npos) {                        \
        std::ostringstream message_;                                                       \
        message_ << __FILE__ << ":" << __LINE__ << ": error of " #statement << " lacks \"" \
                 << (text) << "\": " << e_.what_without_backtrace();                       \
        throw torchext_test::Failure{message_.str()};                                      \
      }                                                                                    \
    }                                                                                      \
    if (!raised_) {                                                                        \
      std::ostringstream message_;                                                         \
      message_ << __FILE__ << ":" << __LINE__ << ": " #statement " raised nothing";        \
      throw torchext_test::Failure{message_.str()};                                        \
    }                                                                                      \
  } while (0)

#ifdef TORCHEXT_TEST_MAIN
int main() {
  int failed = 0;
  for (const auto& [name, body] : torchext_test::registry()) {
    try {
      body();
      std::printf("ok      %s\n", name.c_str());
    } catch (const torchext_test::Failure& f) {
      ++failed;
      std::printf("FAILED  %s\n        %s\n", name.c_str(), f.message.c_str());
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAILED  %s\n        unexpected exception: %s\n", name.c_str(), e.what());
    }
  }
  std::printf("%zu tests, %d failed\n", torchext_test::registry().size(), failed);
  return failed == 0 ? 0 : 1;
}
#endif
