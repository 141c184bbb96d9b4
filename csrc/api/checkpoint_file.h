// Checkpoint files on disk: atomic, careful writes and reads with clear errors.
//
// The rules (the same in Python's torchext.Trainer.save, see torchext/_checkpoint.py):
//  - A symbolic link is written through: its target is replaced, not the link.
//  - Only a regular file is ever replaced: a directory, FIFO, device or socket at
//    the path (or at the link's target) is refused before anything is written.
//  - The bytes go to a temporary file in the target's folder, are flushed to
//    disk, and replace the target with one rename: a crash (even kill -9) leaves
//    the old file or the new one, never a mix.
//  - The new file gets the mode torch.save would give it: the old file's mode when
//    there is one, else 0666 minus the umask.
//  - Temporary files are named .torchext-<name hash>-<pid>-<random>.tmp; each
//    save removes those a dead process left for the same target.
#pragma once

#include <string>
#include <vector>

namespace torchext::detail {

// The file a checkpoint written to `path` replaces or creates (symbolic links
// followed). Raises c10::Error naming `who` if that is not a regular file or its
// folder does not exist.
std::string checkpoint_target(const std::string& path, const char* who);

// Writes `bytes` to checkpoint_target(path) by the rules above.
void write_file_atomically(const std::string& path, const std::vector<char>& bytes,
                           const char* who);

// The contents of `path`; raises a one-sentence c10::Error naming the file if it
// is missing, not a regular file, unreadable or empty.
std::vector<char> read_checkpoint_bytes(const std::string& path, const char* who);

}  // namespace torchext::detail
