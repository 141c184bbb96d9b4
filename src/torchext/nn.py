"""``torchext.nn``: modules backed by torchext's C++/CUDA operators.

``Linear`` is a ``torch.nn.Linear`` (a subclass: same constructor, initialisation,
``state_dict``, ``extra_repr``; any leading batch dims, 1-D and empty inputs) whose
forward and backward run ``torch.ops.torchext.linear`` /
``torch.ops.torchext.linear_backward``. ``MLP`` chains them.
"""

import torch
from torch import Tensor

from .ops import linear

__all__ = ["Linear", "MLP"]


class Linear(torch.nn.Linear):
    r"""``torch.nn.Linear`` whose forward runs torchext's operators.

    A subclass of :class:`torch.nn.Linear`, so ``isinstance(m, torch.nn.Linear)`` holds and
    everything that looks for ``nn.Linear`` (weight-init loops, wrap policies, adapters) finds
    it. Constructor (``in_features, out_features, bias=True, device=None, dtype=None``),
    parameters, initialisation (same seed, bit-identical values), ``reset_parameters``,
    ``extra_repr``, repr and ``state_dict`` are ``torch.nn.Linear``'s own. ``forward`` is
    :func:`torchext.ops.linear`: ``torch.ops.torchext.linear`` and, in backward,
    ``torch.ops.torchext.linear_backward``, with autocast, forward-mode AD, vmap rules and
    every torch.func transform; it scripts with ``torch.jit.script``.

    Shape:
        input ``(*, in_features)``, output ``(*, out_features)``.
    """

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)


# name -> activation module, for MLP and for recognising chains in torchext.Trainer.
ACTIVATIONS = {
    "identity": torch.nn.Identity,
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "sigmoid": torch.nn.Sigmoid,
    "gelu": torch.nn.GELU,
}


class MLP(torch.nn.Sequential):
    """A chain of :class:`Linear` layers with one activation between consecutive layers.

    ``MLP([20, 30, 30, 40], activation="relu")`` is
    ``Sequential(Linear(20, 30), ReLU(), Linear(30, 30), ReLU(), Linear(30, 40))``:
    no activation after the last layer. Built from the same seed, it holds the
    same parameters as that stock ``nn.Sequential`` (and its state_dict keys,
    ``"0.weight"``, ``"2.weight"``, …, are the same). ``torchext.Trainer`` runs it
    on its fused C++ core.

    Args:
        sizes: feature sizes, input first: at least two entries.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"`` (exact, erf) or
            ``"identity"`` (no activation modules).
        bias, device, dtype: as for :class:`Linear`, applied to every layer.
    """

    def __init__(self, sizes, activation: str = "relu", bias: bool = True, device=None,
                 dtype=None) -> None:
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least two sizes (input and output), got {sizes}")
        if any(s < 0 for s in sizes):
            raise ValueError(f"MLP sizes must be non-negative, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(fan_in, fan_out, bias=bias, device=device, dtype=dtype))
            if i < len(sizes) - 2 and activation != "identity":
                layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = sizes
        self.activation = activation
