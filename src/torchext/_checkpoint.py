"""Trainer checkpoints: the file on disk, its checksum, and checking a state before loading it.

Files follow the rules of the C++ ``torchext::save`` (``csrc/api/checkpoint_file.h``):

- a symbolic link is written through (its target is replaced, not the link);
- only a regular file is ever replaced: a directory, FIFO, device or socket is refused before
  anything is written (so ``--save /dev/null`` is an error, not a replaced device node);
- the bytes go to a temporary file in the target's folder, are flushed to disk and replace the
  target with one rename, so a crash (even ``kill -9``) leaves the old file or the new one;
- the new file gets the mode ``torch.save`` would give it (the old file's, else ``0o666`` minus
  the umask);
- temporary files are named ``.torchext-<name hash>-<pid>-<random>.tmp``, and each save removes
  those that dead processes left for the same target.

A checkpoint carries ``"checksum": "sha1:..."``, a SHA-1 over a canonical encoding of every other
entry (the same as ``csrc/api/checksum.cpp``, so C++ and Python verify each other's files); the
file stays an ordinary ``torch.save`` dict that ``torch.load`` reads. Every problem with a file is
a :class:`CheckpointError` whose message is one sentence naming the file.
"""

import hashlib
import os
import pickle
import secrets
import stat
import struct
import zipfile
from collections.abc import Mapping
from numbers import Integral, Real

import torch

__all__ = ["CheckpointError", "checksum", "read_checkpoint", "writable_target",
           "write_atomically", "checked_state"]

CHECKPOINT_KEYS = ("model", "optimizer", "step")
MAX_STEP = 2**63 - 1


class CheckpointError(ValueError):
    """A checkpoint (or a path for one) that cannot be used; the message names the file."""


# ---------------------------------------------------------------------------------------- files

def _kind(mode):
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def writable_target(path, who):
    """The file a write to ``path`` replaces or creates (links followed); raises if unusable."""
    path = os.fspath(path)
    if not path:
        raise CheckpointError(f"{who}: the path is empty")
    target = os.path.realpath(path)
    via = "" if target == os.path.abspath(path) else f" (where {path} leads)"
    folder = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        if not os.path.isdir(folder):
            raise CheckpointError(f"{who}: {path}: the folder {folder} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"{who}: cannot use {path}: {exc.strerror}") from None
    else:
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{who}: {target}{via} is {_kind(mode)}; only a regular file "
                                  "is ever replaced")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"{who}: {path}: the folder {folder} is not writable")
    return target


def _temp_prefix(target):
    name = os.fsencode(os.path.basename(target))
    return f".torchext-{hashlib.sha1(name).hexdigest()[:12]}-"


def _remove_stale_temps(folder, prefix):
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive: its save is still running
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        stale = os.path.join(folder, name)
        try:
            if stat.S_ISREG(os.lstat(stale).st_mode):
                os.remove(stale)
        except OSError:
            pass


def write_atomically(path, write, who):
    """Calls ``write(file)`` on a temporary file and moves it over ``path`` (the rules above)."""
    target = writable_target(path, who)
    folder = os.path.dirname(target)
    prefix = _temp_prefix(target)
    _remove_stale_temps(folder, prefix)
    tmp = os.path.join(folder, f"{prefix}{os.getpid()}-{secrets.randbelow(2**32)}.tmp")
    # 0o666: the kernel applies the umask, as for a file torch.save creates.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                old = os.stat(target)
            except FileNotFoundError:
                pass
            else:  # replacing a file keeps its mode (and, for root, its owner)
                os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode))
                if os.geteuid() == 0:
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    try:  # the rename reaches the disk with the folder's next flush: ask for it now
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------- checksum

def _encode(value, h):
    if value is None:
        h.update(b"N")
    elif isinstance(value, bool):
        h.update(b"T" if value else b"F")
    elif isinstance(value, int):
        h.update(b"I%d;" % value)
    elif isinstance(value, float):
        h.update(b"D" + struct.pack("<d", value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data))
        h.update(data)
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d:" % len(value))
        for item in value:
            _encode(item, h)
    elif isinstance(value, Mapping):
        h.update(b"M%d:" % len(value))
        for key, item in value.items():
            _encode(key, h)
            _encode(item, h)
    elif isinstance(value, torch.Tensor):
        t = value.detach().to("cpu").contiguous()
        shape = ",".join(str(s) for s in t.shape)
        h.update(f"X{str(t.dtype).removeprefix('torch.')}[{shape}]".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    else:
        raise TypeError(f"a checkpoint cannot hold a {type(value).__name__} (no checksum for it)")


def checksum(state):
    """``"sha1:<hex>"`` over every entry of ``state`` but ``"checksum"`` (see the module doc)."""
    body = {key: value for key, value in state.items() if key != "checksum"}
    h = hashlib.sha1()
    _encode(body, h)
    return "sha1:" + h.hexdigest()


# ---------------------------------------------------------------------------------------- reading

def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_checkpoint(path, map_location, who):
    """The checkpoint dict in ``path`` (``torch.load``, weights_only), its checksum verified."""
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{who}: {path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{who}: cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(f"{who}: {path} is {_kind(info.st_mode)}, not a checkpoint file")
    if info.st_size == 0:
        raise CheckpointError(f"{who}: {path} is empty (0 bytes), not a checkpoint")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"PK\x03\x04":
            with zipfile.ZipFile(path):  # finds the central directory: the end of the file
                pass
    except zipfile.BadZipFile:
        raise CheckpointError(f"{who}: {path} is truncated or damaged (not a complete zip "
                              "archive)") from None
    except OSError as exc:
        raise CheckpointError(f"{who}: cannot read {path}: {exc.strerror}") from None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CheckpointError(f"{who}: {path} holds objects other than tensors and plain "
                                  "containers, which a checkpoint never does; refused") from None
        if magic != b"PK\x03\x04":  # neither a zip archive nor a legacy torch.save pickle
            raise CheckpointError(f"{who}: {path} is not a torch.save file") from None
        raise CheckpointError(f"{who}: {path} is damaged ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{who}: {path} is not a torchext.Trainer checkpoint (it holds a "
                              f"{type(state).__name__}, not a dict)")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{who}: {path} is not a torchext.Trainer checkpoint (it has no "
                              f"{', '.join(repr(k) for k in missing)})")
    if "checksum" in state:  # files written by hand or by older versions have none
        try:
            ok = state["checksum"] == checksum(state)
        except TypeError:
            ok = False
        if not ok:
            raise CheckpointError(f"{who}: {path} is damaged: its contents do not match its "
                                  "checksum")
    return state


# ---------------------------------------------------------------------------------------- states

def _same_kind(a, b):
    return (a.is_floating_point() == b.is_floating_point() and a.is_complex() == b.is_complex()
            and (a.dtype == torch.bool) == (b.dtype == torch.bool))


def _check_tensor(value, like, what):
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{what} is a {type(value).__name__}, not a tensor")
    if value.is_meta or value.layout != torch.strided:
        raise ValueError(f"{what} is a tensor without data (on the meta device or not dense)")
    if like is not None:
        if value.shape != like.shape:
            raise ValueError(f"{what} has shape {tuple(value.shape)}, but the model's is "
                             f"{tuple(like.shape)}")
        if not _same_kind(value, like):
            raise ValueError(f"{what} is {value.dtype}, which cannot stand for the model's "
                             f"{like.dtype}")


def _is_number(value):
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_meta
    return isinstance(value, Real) and not isinstance(value, bool)


_SGD_NUMBERS = ("lr", "momentum", "dampening", "weight_decay")


def checked_state(state, model, optimizer, sgd):
    """The step count of ``state`` after checking all of it against ``model`` and ``optimizer``.

    Raises ValueError naming the first problem; nothing is changed. ``sgd``: the optimizer is an
    SGD, whose hyper-parameters and momentum buffers can be checked in detail.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"a checkpoint must be a dict, got {type(state).__name__}")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ValueError(f"not a torchext.Trainer checkpoint: missing {', '.join(missing)}")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, Integral) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"the checkpoint's step must be an integer in [0, {MAX_STEP}], got "
                         f"{step!r}"[:200])

    model_state, current = state["model"], model.state_dict()
    if not isinstance(model_state, Mapping):
        raise ValueError(f"the checkpoint's model state must be a dict, got "
                         f"{type(model_state).__name__}")
    if set(model_state) != set(current):
        raise ValueError("checkpoint does not match the model: missing "
                         f"{sorted(set(current) - set(model_state))}, unexpected "
                         f"{sorted(set(model_state) - set(current), key=str)}")
    for key, value in current.items():
        _check_tensor(model_state[key], value, f"checkpoint does not match the model: {key}")

    opt_state = state["optimizer"]
    if not isinstance(opt_state, Mapping) or not {"state", "param_groups"} <= set(opt_state):
        raise ValueError("the checkpoint's optimizer state must be a dict with 'state' and "
                         "'param_groups'")
    groups, saved_groups = optimizer.param_groups, opt_state["param_groups"]
    if not isinstance(saved_groups, (list, tuple)) or len(saved_groups) != len(groups):
        raise ValueError(f"the checkpoint's optimizer has "
                         f"{len(saved_groups) if isinstance(saved_groups, (list, tuple)) else 'no'}"
                         f" parameter groups, the optimizer {len(groups)}")
    params = {}
    for g, (saved, group) in enumerate(zip(saved_groups, groups)):
        indices = saved.get("params") if isinstance(saved, Mapping) else None
        if not isinstance(indices, (list, tuple)) or len(indices) != len(group["params"]):
            raise ValueError(f"the checkpoint's parameter group {g} does not match the "
                             f"optimizer's ({len(group['params'])} parameters)")
        params.update(zip(indices, group["params"]))
        for key in _SGD_NUMBERS if sgd else ():
            if key in saved and not _is_number(saved[key]):
                raise ValueError(f"the checkpoint's parameter group {g} has {key} "
                                 f"{saved[key]!r}"[:200] + ", not a number")
    per_param = opt_state["state"]
    if not isinstance(per_param, Mapping):
        raise ValueError("the checkpoint's optimizer 'state' must be a dict")
    for index, entry in per_param.items():
        if index not in params or not isinstance(entry, Mapping):
            raise ValueError(f"the checkpoint's optimizer state has an entry {index!r} that no "
                             "parameter group lists")
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) or (sgd and key == "momentum_buffer"
                                                   and value is not None):
                like = params[index] if sgd and key == "momentum_buffer" else None
                _check_tensor(value, like, f"the checkpoint's optimizer {key} of parameter "
                                           f"{index}")
    return int(step)
