"""Mixed precision for ``torchext.Trainer``: the precision names, the loss scaler, autocast.

``precision="bf16-mixed"`` / ``"16-mixed"`` train a float32 model as the stock loop does under
``torch.autocast(device_type, torch.bfloat16 | torch.float16)``; ``"16-mixed"`` adds
``torch.amp.GradScaler``. The C++ core runs both on chains of dense layers; the eager loop runs
any other model under ``torch.autocast`` with the same scaler. Either way the scaler is a real
``torch.amp.GradScaler`` (``trainer.scaler``): the core steps its own scale and growth-tracker
tensors in place, so ``scaler.get_scale()`` and ``scaler.state_dict()`` follow the training and
a hand-written loop can take over with the same scaler at any step.
"""

import contextlib
from numbers import Integral, Real

import torch

__all__ = ["PRECISIONS", "check_precision", "make_scaler", "prepare_scaler", "autocast",
           "check_scaler_state"]

PRECISIONS = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_INT32_MAX = 2**31 - 1


def check_precision(precision):
    """``precision`` if it names one (None: the model's own dtype); else ValueError."""
    if precision is None or (isinstance(precision, str) and precision in PRECISIONS):
        return precision
    raise ValueError(f"precision must be None, 'bf16-mixed' or '16-mixed', got {precision!r}"[:300])


def make_scaler(precision, scaler, device):
    """The GradScaler of a "16-mixed" trainer (``scaler``, or one with GradScaler's defaults)."""
    if precision != "16-mixed":
        if scaler is not None:
            raise ValueError(f"a scaler is used only with precision='16-mixed', not with "
                             f"precision={precision!r}")
        return None
    if scaler is None:
        return torch.amp.GradScaler(device.type)
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    if scaler.is_enabled() and scaler._device != device.type:
        raise ValueError(f"the GradScaler is for {scaler._device!r} but the model is on "
                         f"{device}; make it with torch.amp.GradScaler({device.type!r})")
    return scaler


def prepare_scaler(scaler, device):
    """Creates the scaler's state tensors on ``device`` where GradScaler has not yet."""
    if scaler is not None and scaler.is_enabled() and scaler._scale is None:
        scaler._lazy_init_scale_growth_tracker(device)


def autocast(precision, device):
    """``torch.autocast`` for ``precision`` on ``device`` (a no-op context for None)."""
    if precision is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


def _number(state, key, ok, what):
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, Real) or not ok(value):
        raise ValueError(f"the checkpoint's scaler {key} must be {what}, got {value!r}"[:200])


def check_scaler_state(state):
    """Raises ValueError unless ``state`` is a GradScaler state dict a scaler can load.

    ``{}`` (what a disabled GradScaler saves) passes: it holds nothing to restore.
    """
    if not isinstance(state, dict):
        raise ValueError(f"the checkpoint's scaler state must be a dict, got "
                         f"{type(state).__name__}")
    if not state:
        return
    _number(state, "scale", lambda v: 0 < v < float("inf"), "a finite positive number")
    _number(state, "growth_factor", lambda v: 1 < v < float("inf"), "a finite number > 1")
    _number(state, "backoff_factor", lambda v: 0 < v < 1, "a number in (0, 1)")
    for key, lo in (("growth_interval", 1), ("_growth_tracker", 0)):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, Integral) or not (
                lo <= value <= _INT32_MAX):
            raise ValueError(f"the checkpoint's scaler {key} must be an integer in [{lo}, "
                             f"{_INT32_MAX}], got {value!r}"[:200])
