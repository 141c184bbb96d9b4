"""``torchext.nn``: modules backed by torchext's C++/CUDA operators.

``Linear`` is a drop-in twin of ``torch.nn.Linear``: same constructor, same
initialisation (same seed, bit-identical parameters), same ``state_dict`` keys,
``extra_repr`` and behaviour on any leading batch dims, 1-D and empty inputs;
its forward and backward run ``torch.ops.torchext.linear`` /
``torch.ops.torchext.linear_backward``.
"""

import math

import torch
from torch import Tensor
from torch.nn import Module, Parameter, init

from .ops import linear

__all__ = ["Linear", "MLP"]


class Linear(Module):
    r"""Applies an affine transformation ``y = x Aᵀ + b``, like ``torch.nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: if ``False``, the layer learns no additive bias. Default: ``True``.
        device, dtype: where and in which floating type the parameters are created.

    Shape:
        input ``(*, in_features)``, output ``(*, out_features)``.

    Attributes:
        weight: ``(out_features, in_features)``, initialised from
            :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})` with :math:`k = 1/\text{in\_features}`.
        bias: ``(out_features,)``, same distribution, or ``None``.
    """

    __constants__ = ["in_features", "out_features"]
    in_features: int
    out_features: int
    weight: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(torch.empty((out_features, in_features), **factory_kwargs))
        if bias:
            self.bias = Parameter(torch.empty(out_features, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same draws, in the same order, as torch.nn.Linear.reset_parameters,
        # so that one seed gives bit-identical parameters in both modules.
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


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
