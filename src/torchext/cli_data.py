"""Data for ``python -m torchext``: the built-in teacher task and loading user files.

The built-in task needs no download: inputs are standard normal, and targets come
from a fixed random *teacher* network (20 → 64 → out, tanh) drawn from a seed. For
``mse`` the targets are the teacher's outputs; for ``cross_entropy`` they are its
argmax, as class indices. A held-out split is drawn the same way.

User data (``--data PATH``), chosen by the file's extension:
  ``.pt``   a ``torch.save``'d dict with tensors ``x`` and ``y`` (read with ``weights_only``)
  ``.npz``  a ``numpy.savez`` archive with arrays ``x`` and ``y``
  ``.csv``  numbers separated by commas, one sample per line; the last ``targets`` columns are
            the target (for ``cross_entropy`` the last column is the class index). One header
            line is allowed if none of its cells is a number; ``#`` starts a comment line.
``x`` must be 2-D (samples × features). For ``mse``, ``y`` is 1-D (one target) or 2-D; for
``cross_entropy``, 1-D whole numbers from 0 to at most ``MAX_CLASSES - 1`` (the output layer has
one unit per class up to the largest label, so a stray huge label would otherwise ask for an
absurd layer). A CSV may start with a UTF-8 byte-order mark. Every problem raises
:class:`DataError` with one sentence that names the file and what is wrong, so the command line
can print it and exit.
"""

import math
import os
import stat
import zipfile

import numpy as np
import torch

__all__ = ["DataError", "load_data", "split", "teacher_task"]

TEACHER_HIDDEN = 64
MAX_CLASSES = 100_000
MAX_SAMPLES = 10**7  # the built-in task: 10**7 samples of 20 float64 features are 1.6 GB
MAX_TARGETS = 10**6


class DataError(ValueError):
    """A data file that cannot be used; the message is one user-facing sentence."""


def teacher_task(samples, in_features, out_features, loss, *, seed=0, dtype=torch.float32):
    """``(x, y)`` of ``samples`` rows from the seeded teacher network (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    # Weights scaled by 1/sqrt(fan_in) keep the teacher's outputs of order one.
    w1 = torch.randn(TEACHER_HIDDEN, in_features, generator=gen, dtype=torch.float64)
    w2 = torch.randn(out_features, TEACHER_HIDDEN, generator=gen, dtype=torch.float64)
    x = torch.randn(samples, in_features, generator=gen, dtype=torch.float64)
    out = torch.tanh(x @ w1.T / math.sqrt(in_features)) @ w2.T / math.sqrt(TEACHER_HIDDEN)
    y = out.argmax(dim=1) if loss == "cross_entropy" else out.to(dtype)
    return x.to(dtype), y


def split(x, y, held_out_fraction, seed=0):
    """Shuffles the rows once (seeded) and returns ``(x_train, y_train, x_held, y_held)``."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    held = round(x.shape[0] * held_out_fraction)
    if x.shape[0] - held < 1 or (held_out_fraction > 0 and held < 1):
        raise DataError(f"{x.shape[0]} samples are too few to split into training and held-out "
                        "sets")
    train, test = order[held:], order[:held]
    return x[train], y[train], x[test], y[test]


def load_data(path, loss, *, targets=1, dtype=torch.float32):
    """Reads ``(x, y)`` from ``path`` (.pt, .npz or .csv) and checks them for ``loss``."""
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory, not a data file")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: is not a regular file (a FIFO, device or socket)")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read it (permission denied)")
    ext = os.path.splitext(path)[1].lower()
    readers = {".pt": _read_pt, ".pth": _read_pt, ".npz": _read_npz,
               ".csv": lambda p: _read_csv(p, targets)}
    if ext not in readers:
        raise DataError(f"{path}: unknown data format {ext or '(no extension)'!r}; "
                        "expected .pt, .npz or .csv")
    x, y = readers[ext](path)
    return _check(path, x, y, loss, dtype)


def _read_pt(path):
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
        raise DataError(f"{path}: not a readable torch.save file ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with tensors 'x' and 'y', found "
                        f"{type(data).__name__}")
    return _pick(path, data, torch.Tensor, "tensors")


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({_first_line(exc)})") from None
    x, y = _pick(path, arrays, np.ndarray, "arrays")
    try:
        return torch.from_numpy(x), torch.from_numpy(y)
    except TypeError:
        raise DataError(f"{path}: 'x' and 'y' must be numeric arrays, found {x.dtype} and "
                        f"{y.dtype}") from None


def _pick(path, data, kind, kind_name):
    missing = [key for key in ("x", "y") if key not in data]
    if missing:
        found = ", ".join(repr(k) for k in data) or "nothing"
        raise DataError(f"{path}: missing {' and '.join(repr(k) for k in missing)}; expected "
                        f"{kind_name} 'x' and 'y', found {found}")
    for key in ("x", "y"):
        if not isinstance(data[key], kind):
            raise DataError(f"{path}: {key!r} is a {type(data[key]).__name__}, not one of the "
                            f"expected {kind_name}")
    return data["x"], data["y"]


def _read_csv(path, targets):
    rows, width = [], None
    # utf-8-sig: a byte-order mark (as some spreadsheets write) is not part of the first cell.
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            cells = [cell.strip() for cell in line.split(",")]
            values = [_number(cell) for cell in cells]
            if not rows and width is None and all(v is None for v in values):
                width = len(cells)  # a header line: it fixes the column count only
                continue
            if width is not None and len(cells) != width:
                raise DataError(f"{path}, line {number}: {len(cells)} columns, expected {width}")
            width = len(cells)
            bad = next((i for i, v in enumerate(values) if v is None), None)
            if bad is not None:
                raise DataError(f"{path}, line {number}, column {bad + 1}: {cells[bad]!r} is "
                                "not a number")
            rows.append(values)
    if not rows:
        raise DataError(f"{path}: no data rows")
    if width <= targets:
        raise DataError(f"{path}: {width} columns leave no features after {targets} target "
                        "column(s)")
    table = torch.tensor(rows, dtype=torch.float64)
    y = table[:, -targets:]
    return table[:, :-targets], (y.squeeze(1) if targets == 1 else y)


def _number(cell):
    try:
        return float(cell)
    except ValueError:
        return None


def _check(path, x, y, loss, dtype):
    if x.dim() != 2:
        raise DataError(f"{path}: 'x' must be 2-D (samples x features), found shape "
                        f"{tuple(x.shape)}")
    if x.shape[1] == 0:
        raise DataError(f"{path}: 'x' has no features")
    if y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: 'x' has {x.shape[0]} samples but 'y' has "
                        f"{y.shape[0] if y.dim() else 'none (a scalar)'}")
    if x.shape[0] == 0:
        raise DataError(f"{path}: the data is empty (0 samples)")
    if x.dtype == torch.bool or x.is_complex() or y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{path}: 'x' and 'y' must be real numbers, found {x.dtype} and {y.dtype}")
    x = x.to(dtype)
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: 'x' contains NaN or infinite values")
    if loss == "cross_entropy":
        if y.dim() != 1:
            raise DataError(f"{path}: cross_entropy needs 1-D class indices in 'y', found shape "
                            f"{tuple(y.shape)}")
        if y.is_floating_point() and not torch.isfinite(y).all():
            raise DataError(f"{path}: 'y' contains NaN or infinite values")
        if (y.is_floating_point() and not torch.equal(y, y.round())) or (y < 0).any():
            raise DataError(f"{path}: cross_entropy needs whole-number class indices from 0 in "
                            "'y'")
        largest = y.max().item()
        if largest >= MAX_CLASSES:
            raise DataError(f"{path}: class label {largest:.15g} would need an output layer of "
                            f"{largest + 1:.15g} classes; labels must lie in [0, "
                            f"{MAX_CLASSES - 1}]")
        return x, y.to(torch.long)
    if y.dim() > 2:
        raise DataError(f"{path}: 'y' must be 1-D or 2-D for mse, found shape {tuple(y.shape)}")
    y = (y.unsqueeze(1) if y.dim() == 1 else y).to(dtype)
    if not torch.isfinite(y).all():
        raise DataError(f"{path}: 'y' contains NaN or infinite values")
    return x, y


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
