// TrainerLock (see torchext/trainer_lock.h).
#include <torchext/trainer_lock.h>

#include <c10/util/Exception.h>

namespace torchext {

TrainerLock::Hold::~Hold() {
  if (lock_ != nullptr) {
    lock_->owner_.store(std::thread::id());
    lock_->mutex_.unlock();
  }
}

TrainerLock::Hold TrainerLock::nested(Access access, const char* who) {
  TORCH_CHECK(access == Access::Read, who,
              ": called from inside a running call on the same trainer (a fit progress "
              "callback?); calls on one trainer cannot nest, except state_dict and save");
  return Hold(nullptr);
}

TrainerLock::Hold TrainerLock::acquire(Access access, const char* who) {
  // Only this thread can have stored its own id, so the comparison needs no lock.
  if (owner_.load() == std::this_thread::get_id()) return nested(access, who);
  mutex_.lock();
  owner_.store(std::this_thread::get_id());
  return Hold(this);
}

c10::optional<TrainerLock::Hold> TrainerLock::try_acquire(Access access, const char* who) {
  if (owner_.load() == std::this_thread::get_id()) return nested(access, who);
  if (!mutex_.try_lock()) return c10::nullopt;
  owner_.store(std::this_thread::get_id());
  return Hold(this);
}

}  // namespace torchext
