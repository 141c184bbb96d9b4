// Runtime ISA dispatch and threading policy of torchext's CPU kernels (the
// fused_sgd_ kernel in csrc/ops/cpu and the training core's in csrc/train).
//
// ISA. The library is compiled for the baseline ISA of its target, so it runs
// on any CPU; each hot kernel also exists in an AVX2 (+FMA, F16C) and an
// AVX-512 (F/BW/VL/DQ, the set torch's AVX512 capability needs) build. Those
// are functions carrying TORCHEXT_TARGET_AVX2 / TORCHEXT_TARGET_AVX512 (target
// attributes, never per-file flags: an inline function of a header compiled
// with AVX-512 flags could be merged by the linker into the whole library),
// and they are entered only after cpu_isa() said so. cpu_isa() is the best
// build the CPU runs, capped by torch's CPU capability, so ATEN_CPU_CAPABILITY
// (`default`, `avx2`, `avx512`) steers torchext's kernels as it steers torch's.
// Tests and benchmarks may pin another build the CPU has (set_cpu_isa).
//
// Threads. Passes split over torch's intra-op threads (at::parallel_for: the
// OpenMP pool of torch's CPU build, which libtorchext is compiled with, so
// torch.set_num_threads applies, and the threads torch's own ops just used are
// the ones that pick the work up) only when every thread gets enough work: a
// fork/join costs microseconds, and an oversubscribed machine turns it into
// milliseconds, so small layers stay on the calling thread and a step never
// gets slower with more threads. Work is split over independent outputs only
// (rows, columns, tensors), so results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define TORCHEXT_X86_SIMD 1
#if defined(__clang__)
#define TORCHEXT_PREFER_512 ""
#else
// GCC vectorises loops 256 bits wide for AVX-512 targets unless told otherwise.
#define TORCHEXT_PREFER_512 ",prefer-vector-width=512"
#endif
#define TORCHEXT_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TORCHEXT_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c" TORCHEXT_PREFER_512)))
#else
#define TORCHEXT_X86_SIMD 0
#endif

namespace torchext::cpu {

// The builds of a kernel, in increasing order of what they need.
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// The build the kernels run now (see above).
Isa cpu_isa();
// The best build this CPU can run, whatever torch's capability.
Isa best_supported_isa();
// "DEFAULT", "AVX2", "AVX512": torch's names for the matching capabilities.
const char* isa_name(Isa isa);
// Pins the build the kernels run (tests, benchmarks). Throws c10::Error, with
// nothing changed, for a build this CPU cannot run.
void set_cpu_isa(Isa isa);
// Back to the default choice.
void reset_cpu_isa();

// ---------------------------------------------------------------------------
// Threads.

// Elements per thread below which a hand-off costs more than it saves (a
// fork/join of torch's pool is a few microseconds on an idle machine).
// kMinElementsPerThread: a pass over data in memory or spread over the threads'
// caches (the SGD update; a pass after a BLAS product, which torch's threads
// wrote). kMinPassElementsPerThread: a pass over what the calling thread has
// just written (after the tiles or the loss), where a split also moves the
// other core's half between the caches. On a 2-core Xeon, an 8-64-4 network at
// batch 4096 took 376 µs a step on two threads against 312 on one while these
// passes split from 2^15 elements a thread (and its tiles from 2^18
// multiply-adds); with neither split, 280-303 against 288-291.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 15;
constexpr int64_t kMinPassElementsPerThread = int64_t{1} << 18;
// Multiply-adds per thread below which the tiles of a GEMM stay on the calling
// thread: the next pass reads what they wrote. At 2^18, the seed network at
// batch 512 took 97 µs a step on two threads against 81 on one, and at 2^20,
// at batch 2048, 320-331 µs against 301-309 (2-core Xeon). At 2^21, only the
// largest products the tiles take (2^22, cpu_gemm.cpp) split.
constexpr int64_t kMinMacsPerThread = int64_t{1} << 21;
// Multiply-adds of a whole step per member below which a small network's step
// stays on the calling thread rather than running as a team (train/team.h),
// which forks once a step and meets at a barrier a layer. On a 2-core Zen 4,
// two members took the seed network's step at batch 128 (2^19 a member)
// 1.11-1.23x faster than one thread, at batch 64 (just under 2^18) 0.92-1.00x.
constexpr int64_t kMinMacsPerTeamMember = int64_t{1} << 18;

// How many threads `work` units deserve, given kMin*PerThread as `min_per_thread`.
inline int64_t threads_for(int64_t work, int64_t min_per_thread) {
  if (work < 2 * min_per_thread || at::in_parallel_region()) return 1;
  return std::min<int64_t>(at::get_num_threads(), work / min_per_thread);
}

// f(b, e) over [begin, end) in at most threads_for(...) contiguous pieces, each
// index costing `cost` units of `min_per_thread`'s kind.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t cost, int64_t min_per_thread, const F& f) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  const int64_t tasks = std::min(n, threads_for(n * std::max<int64_t>(cost, 1), min_per_thread));
  if (tasks < 2) return f(begin, end);
  at::parallel_for(begin, end, (n + tasks - 1) / tasks, f);
}

// item(0 .. items) on up to `threads` threads (threads_for), each thread
// claiming the next unclaimed item: a thread that starts late (a busy machine)
// takes fewer, and uneven items even out.
template <typename F>
void parallel_items(int64_t items, int64_t threads, const F& item) {
  if (threads < 2 || items < 2) {
    for (int64_t k = 0; k < items; ++k) item(k);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, items), 1, [&](int64_t, int64_t) {
    for (int64_t k = next++; k < items; k = next++) item(k);
  });
}

}  // namespace torchext::cpu
