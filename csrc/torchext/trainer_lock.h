// TrainerLock: serialises the calls on one trainer, from C++ and Python alike.
//
// Every TrainerCore entry point (step, fit, evaluate, predict) holds its core's
// lock for the whole call; torchext::Trainer and the Python torchext.Trainer hold
// the same lock around the calls that read or write the model and optimizer
// outside the core (state_dict, load_state_dict, save, load).
//
// Policy: a call from a second thread waits until the running call returns. A
// call from the thread that already holds the lock cannot wait for itself; that
// happens when fit's progress callback (or its interruption point) calls back
// into its own trainer. Such a call is granted Read access (state_dict, save:
// the callback runs between two steps, so the state it sees is consistent), and
// Run and Write raise c10::Error instead of deadlocking or corrupting the
// workspaces of the running call.
#pragma once

#include <c10/util/Optional.h>

#include <atomic>
#include <mutex>
#include <thread>

namespace torchext {

class TrainerLock {
 public:
  enum class Access {
    Run,    // a training or inference call: step, fit, evaluate, predict
    Read,   // reads the model and optimizer state: state_dict, save
    Write,  // replaces it: load_state_dict, load, setting the step count
  };

  // Holds the lock until destroyed (or, for a nested Read, holds nothing).
  class Hold {
   public:
    Hold(Hold&& other) noexcept : lock_(other.lock_) { other.lock_ = nullptr; }
    Hold& operator=(Hold&&) = delete;
    Hold(const Hold&) = delete;
    ~Hold();

   private:
    friend class TrainerLock;
    explicit Hold(TrainerLock* lock) : lock_(lock) {}
    TrainerLock* lock_;  // null: owns nothing
  };

  TrainerLock() = default;
  TrainerLock(const TrainerLock&) = delete;
  TrainerLock& operator=(const TrainerLock&) = delete;

  // Waits while another thread holds the lock. `who` names the call in the error
  // raised for a nested Run or Write.
  Hold acquire(Access access, const char* who);
  // The same without waiting: nullopt while another thread holds the lock.
  c10::optional<Hold> try_acquire(Access access, const char* who);

 private:
  Hold nested(Access access, const char* who);

  std::mutex mutex_;
  std::atomic<std::thread::id> owner_{};
};

}  // namespace torchext
