// A team of threads that runs a whole training step together, meeting at
// barriers, for networks whose products are each too small to split alone.
//
// Splitting each product of a small network over torch's threads costs a
// fork/join per product (microseconds each), more than the product takes: the
// seed network stayed on one thread (csrc/cpu/dispatch.h). A team forks once
// per step: each member takes a share of the batch rows through the forward
// pass and the input gradients, and of the weights' and biases' elements for
// their gradients, and the members wait for one another only where one needs
// what another wrote (step_cpu.cpp). The barrier spins, as the gaps it bridges
// are shorter than a wake-up, and yields after a while so that an
// oversubscribed machine still makes progress.
//
// A member that throws aborts the barrier: the others leave at their next
// barrier, and run_team rethrows the first error on the calling thread, so a
// failure never leaves a thread waiting.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace torchext::train {

class TeamBarrier {
 public:
  explicit TeamBarrier(int size) : size_(size) {}

  // Returns once every member has arrived; throws Aborted if a member failed.
  void arrive_and_wait() {
    const int64_t phase = phase_.load(std::memory_order_acquire);
    if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == size_) {
      waiting_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
    } else {
      for (int spins = 0; phase_.load(std::memory_order_acquire) == phase; ++spins) {
        if (aborted_.load(std::memory_order_relaxed)) throw Aborted();
        pause(spins);
      }
    }
    if (aborted_.load(std::memory_order_relaxed)) throw Aborted();
  }

  void abort() { aborted_.store(true, std::memory_order_relaxed); }

  struct Aborted {};

 private:
  // About a microsecond of spinning (on x86) before each wait starts yielding
  // the core.
  static void pause(int spins) {
    if (spins < 1024) {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }

  const int size_;
  std::atomic<int> waiting_{0};
  std::atomic<int64_t> phase_{0};
  std::atomic<bool> aborted_{false};
};

// One member's view of its team.
struct Team {
  int rank = 0;
  int size = 1;
  TeamBarrier* barrier_ = nullptr;

  bool leader() const { return rank == 0; }
  void barrier() const {
    if (size > 1) barrier_->arrive_and_wait();
  }
  // This member's share [begin, end) of n items, cut at multiples of `align`.
  std::pair<int64_t, int64_t> share(int64_t n, int64_t align = 1) const {
    const int64_t units = (n + align - 1) / align;
    return {std::min(n, units * rank / size * align),
            std::min(n, units * (rank + 1) / size * align)};
  }
};

// body(team) on `size` threads (the calling thread is the leader), or on the
// calling thread alone where the library is built without OpenMP or OpenMP
// gives fewer threads than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC).
template <typename Body>
void run_team(int size, const Body& body) {
#ifdef _OPENMP
  if (size > 1) {
    TeamBarrier barrier(size);
    std::exception_ptr error;
    std::mutex error_mutex;
#pragma omp parallel num_threads(size)
    {
      const bool whole_team = omp_get_num_threads() == size;
      const int rank = omp_get_thread_num();
      if (whole_team || rank == 0) {
        try {
          body(whole_team ? Team{rank, size, &barrier} : Team{});
        } catch (const TeamBarrier::Aborted&) {  // another member failed: its error is kept
        } catch (...) {
          barrier.abort();
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  body(Team{});
}

}  // namespace torchext::train
