// Checkpoint files on disk (see checkpoint_file.h). POSIX.
#include "api/checkpoint_file.h"

#include <c10/util/Exception.h>
#include <c10/util/hash.h>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

namespace torchext::detail {
namespace {

std::string folder_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string name_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// `path` with every symbolic link at its end followed (the folders are left as
// they are: the rename happens inside the final folder either way).
std::string follow_links(std::string path, const char* who) {
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st {};
    if (lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return path;
    std::vector<char> target(PATH_MAX + 1);
    const ssize_t n = readlink(path.c_str(), target.data(), PATH_MAX);
    TORCH_CHECK(n >= 0, who, ": cannot read the symbolic link '", path,
                "': ", std::strerror(errno));
    std::string next(target.data(), static_cast<size_t>(n));
    path = next.front() == '/' ? next : folder_of(path) + "/" + next;
  }
  TORCH_CHECK(false, who, ": '", path, "': too many levels of symbolic links");
}

const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// ".torchext-<hash>-": the prefix of every temporary file for a target's name.
std::string temp_prefix(const std::string& target) {
  return ".torchext-" + c10::sha1(name_of(target)).str().substr(0, 12) + "-";
}

// Removes the temporary files that processes no longer alive left for `target`.
void remove_stale_temps(const std::string& folder, const std::string& prefix) {
  DIR* dir = opendir(folder.c_str());
  if (dir == nullptr) return;
  while (const dirent* entry = readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.compare(0, prefix.size(), prefix) != 0 || name.size() < prefix.size() + 5 ||
        name.compare(name.size() - 4, 4, ".tmp") != 0) {
      continue;
    }
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid > 0 && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      const std::string stale = folder + "/" + name;
      struct stat st {};
      if (lstat(stale.c_str(), &st) == 0 && S_ISREG(st.st_mode)) unlink(stale.c_str());
    }
  }
  closedir(dir);
}

}  // namespace

std::string checkpoint_target(const std::string& path, const char* who) {
  TORCH_CHECK(!path.empty(), who, ": the checkpoint path is empty");
  const std::string target = follow_links(path, who);
  const std::string via = target == path ? "" : " (the target of the link '" + path + "')";
  struct stat st {};
  if (stat(target.c_str(), &st) == 0) {
    TORCH_CHECK(S_ISREG(st.st_mode), who, ": '", target, "'", via, " is ", kind_of(st.st_mode),
                "; a checkpoint replaces only a regular file");
  } else {
    TORCH_CHECK(errno == ENOENT, who, ": cannot use '", target, "'", via, ": ",
                std::strerror(errno));
    struct stat folder {};
    TORCH_CHECK(stat(folder_of(target).c_str(), &folder) == 0 && S_ISDIR(folder.st_mode), who,
                ": the folder of '", target, "'", via, " does not exist");
  }
  return target;
}

void write_file_atomically(const std::string& path, const std::vector<char>& bytes,
                           const char* who) {
  const std::string target = checkpoint_target(path, who);
  const std::string folder = folder_of(target), prefix = temp_prefix(target);
  remove_stale_temps(folder, prefix);
  std::random_device random;
  const std::string tmp =
      folder + "/" + prefix + std::to_string(getpid()) + "-" + std::to_string(random()) + ".tmp";
  // 0666: the kernel applies the umask, as for a file torch.save creates.
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  TORCH_CHECK(fd >= 0, who, ": cannot create a file in '", folder, "': ", std::strerror(errno));
  auto fail = [&](const char* what) {
    const int error = errno;
    close(fd);
    unlink(tmp.c_str());
    TORCH_CHECK(false, who, ": ", what, " '", target, "' failed: ", std::strerror(error));
  };
  struct stat old {};
  if (stat(target.c_str(), &old) == 0) {
    // Replacing a file keeps its mode (and, for root, its owner), as writing into it would.
    if (fchmod(fd, old.st_mode & 07777) != 0) fail("setting the mode of");
    if (geteuid() == 0 && fchown(fd, old.st_uid, old.st_gid) != 0) fail("setting the owner of");
  }
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("writing");
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) fail("flushing");
  if (close(fd) != 0) {
    const int error = errno;
    unlink(tmp.c_str());
    TORCH_CHECK(false, who, ": writing '", target, "' failed: ", std::strerror(error));
  }
  if (rename(tmp.c_str(), target.c_str()) != 0) {
    const int error = errno;
    unlink(tmp.c_str());
    TORCH_CHECK(false, who, ": replacing '", target, "' failed: ", std::strerror(error));
  }
  // The rename itself reaches the disk with the folder's next flush; ask for it now.
  const int dir = open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    fsync(dir);
    close(dir);
  }
}

std::vector<char> read_checkpoint_bytes(const std::string& path, const char* who) {
  struct stat st {};
  TORCH_CHECK(stat(path.c_str(), &st) == 0, who, ": '", path,
              "': ", errno == ENOENT ? "no such file" : std::strerror(errno));
  TORCH_CHECK(S_ISREG(st.st_mode), who, ": '", path, "' is ", kind_of(st.st_mode),
              ", not a regular file");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), who, ": cannot read '", path, "': ", std::strerror(errno));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TORCH_CHECK(!in.bad(), who, ": reading '", path, "' failed");
  TORCH_CHECK(!bytes.empty(), who, ": '", path, "' is empty (0 bytes)");
  return bytes;
}

}  // namespace torchext::detail
