"""What the command lines (``python -m torchext``, ``bench``) and ``Trainer.fit`` share.

- :class:`ArgumentParser`: argparse whose errors are one line on stderr (``prog: error: ...``) and
  exit status 2, instead of the whole usage block;
- argument types that check ranges: :func:`integer`, :func:`real`, :func:`int_list`;
- :func:`check_device` (``--device``) and :func:`print_error` (a caught error as that one line);
- :func:`progress_bar` / :func:`fit_progress`: the tqdm progress bar, shown on a terminal.
"""

import argparse
import math
import sys

import torch

__all__ = ["ArgumentParser", "integer", "real", "int_list", "check_device", "print_error",
           "progress_bar", "fit_progress"]


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line and exit status 2."""

    def error(self, message):
        line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {line}\n")


def integer(lo, hi):
    """argparse type: an integer in ``[lo, hi]``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {text}")
        return value

    return parse


def real(lo, hi=math.inf, *, lo_open=False, hi_open=False):
    """argparse type: a finite number in the range from ``lo`` to ``hi`` (ends open as asked)."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else
                                                                value <= hi)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text}")
        return value

    return parse


def int_list(lo=1, hi=2**31 - 1, what="sizes"):
    """argparse type: comma-separated integers in ``[lo, hi]`` ('' gives [])."""

    def parse(text):
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers, got {text!r}") from None
        if any(not lo <= v <= hi for v in values):
            raise argparse.ArgumentTypeError(f"{what} must be integers in [{lo}, {hi}], got "
                                             f"{text!r}")
        return values

    return parse


def check_device(parser, device):
    """Exits with a usage error unless ``device`` is the CPU or an available CUDA device."""
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        parser.error(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error("--device cuda was asked for but torch sees no CUDA device")
        try:
            index = torch.device(device).index
        except RuntimeError:
            parser.error(f"--device {device!r} is not a device name")
        if index is not None and index >= torch.cuda.device_count():
            parser.error(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA devices")


def print_error(prog, message):
    """Prints the first line of ``message`` as ``prog: error: ...``; returns exit status 2."""
    text = str(message).strip()
    print(f"{prog}: error: {text.splitlines()[0] if text else type(message).__name__}",
          file=sys.stderr)
    return 2


class _Bar:
    def __init__(self, tqdm, total, label):
        self._bar = tqdm(total=total, desc=label, unit="step", leave=False)

    def update(self, done, postfix=None):
        self._bar.n = done
        if postfix:
            self._bar.set_postfix_str(postfix, refresh=False)
        self._bar.refresh()

    def close(self):
        self._bar.close()


def progress_bar(total, *, label=None, when="auto"):
    """A progress bar over ``total`` units with ``update(done, postfix)`` and ``close()``, or None.

    ``when``: ``"auto"`` (a bar when stderr is a terminal and tqdm is installed), ``"always"``
    (tqdm required: ImportError without it) or ``"never"``.
    """
    if when == "never" or (when == "auto" and not sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if when == "always":
            raise ImportError("a progress bar needs tqdm: pip install tqdm") from None
        return None
    return _Bar(tqdm, total, label)


def fit_progress(epochs, steps_per_epoch, *, label=None, when="auto"):
    """(callback for ``Trainer.fit``'s ``progress`` argument or None, close function)."""
    bar = progress_bar(epochs * steps_per_epoch, label=label, when=when)
    if bar is None:
        return None, lambda: None

    def update(epoch, step, steps, mean_loss):
        postfix = None if math.isnan(mean_loss) else f"epoch={epoch}, loss={mean_loss:.4g}"
        bar.update(epoch * steps + step, postfix)

    return update, bar.close
