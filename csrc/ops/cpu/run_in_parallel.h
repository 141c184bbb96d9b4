// run_in_parallel: work items shared by the calling thread and torch's
// inter-op thread pool, for CPU kernels of this library.
//
// Unlike at::parallel_for (torchext::cpu::parallel_for, csrc/cpu/dispatch.h),
// which splits a range evenly over the intra-op threads, it hands out work items
// one at a time on torch's inter-op pool (at::launch), so a late thread on a busy
// machine takes fewer of them.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

namespace torchext {

// Runs item(0 .. items) on the calling thread and at::get_num_threads() - 1
// helpers. Items are handed out one at a time from a shared counter, so a
// helper that starts late (a busy pool or machine) takes fewer of them, and one
// that starts after the last item was claimed returns without touching the
// caller's data. The caller waits only for claimed items, so it never waits on
// a helper that has not started.
template <typename F>
void run_in_parallel(int64_t items, const F& item) {
  struct Counters {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto counters = std::make_shared<Counters>();
  auto drain = [counters, items, &item] {
    for (int64_t k = counters->next++; k < items; k = counters->next++) {
      item(k);
      counters->done++;
    }
  };
  const int64_t helpers = std::min<int64_t>(at::get_num_threads(), items) - 1;
  for (int64_t h = 0; h < helpers; ++h) at::launch(drain);
  drain();
  while (counters->done.load() < items) std::this_thread::yield();
}

}  // namespace torchext
