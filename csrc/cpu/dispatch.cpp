// The ISA choice of torchext's CPU kernels (see dispatch.h).
#include "cpu/dispatch.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <string>

namespace torchext::cpu {
namespace {

Isa detect_best_supported() {
#if TORCHEXT_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kPortable;
}

// torch's capability (ATEN_CPU_CAPABILITY, else what the CPU has) as a build of
// ours; torch names it as isa_name() does.
Isa torch_capability() {
  const std::string capability = at::get_cpu_capability();
  if (capability == "AVX512") return Isa::kAvx512;
  if (capability == "AVX2") return Isa::kAvx2;
  return Isa::kPortable;
}

Isa default_isa() {
  static const Isa isa = std::min(best_supported_isa(), torch_capability());
  return isa;
}

constexpr int kNoPin = -1;
std::atomic<int> pinned{kNoPin};

}  // namespace

Isa best_supported_isa() {
  static const Isa isa = detect_best_supported();
  return isa;
}

Isa cpu_isa() {
  const int pin = pinned.load(std::memory_order_relaxed);
  return pin == kNoPin ? default_isa() : static_cast<Isa>(pin);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "AVX512";
    case Isa::kAvx2: return "AVX2";
    case Isa::kPortable: break;
  }
  return "DEFAULT";
}

void set_cpu_isa(Isa isa) {
  TORCH_CHECK(isa >= Isa::kPortable && isa <= best_supported_isa(),
              "torchext: this CPU cannot run the ", isa_name(isa), " kernels; the best it runs is ",
              isa_name(best_supported_isa()));
  pinned.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void reset_cpu_isa() { pinned.store(kNoPin, std::memory_order_relaxed); }

}  // namespace torchext::cpu
