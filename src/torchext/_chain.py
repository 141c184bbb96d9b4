"""Recognising models the training core can run: chains of dense layers.

A chain is Linear → [activation] → Linear → [activation] → … where every
Linear is a ``torch.nn.Linear`` or ``torchext.nn.Linear`` and each activation is
identity, ReLU, tanh, sigmoid or exact GELU. ``extract_chain`` finds one in an
``nn.Sequential`` (nested ones included), a lone Linear, or any module whose
forward traces with ``torch.fx`` to such a chain (the walk-through's
``MyNetwork``). Anything else returns None, and the Trainer runs eagerly.
"""

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import nn as tnn

_LINEAR_TYPES = (nn.Linear, tnn.Linear)
_ACTIVATION_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}
_ACTIVATION_FUNCTIONS = {
    torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu",
}
_ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


@dataclass
class DenseLayer:
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    activation: str = "identity"


class _Chain:
    """Builds the layer list, refusing anything that is not a chain."""

    def __init__(self):
        self.layers: List[DenseLayer] = []

    def add_linear(self, module) -> bool:
        self.layers.append(DenseLayer(module.weight, module.bias))
        return True

    def add_activation(self, name: str) -> bool:
        if name == "identity":
            return True
        if not self.layers or self.layers[-1].activation != "identity":
            return False  # an activation before any layer, or two in a row
        self.layers[-1].activation = name
        return True

    def add_module(self, module) -> bool:
        if isinstance(module, _LINEAR_TYPES):
            return self.add_linear(module)
        if isinstance(module, nn.Identity):
            return True
        if isinstance(module, nn.GELU):
            return module.approximate == "none" and self.add_activation("gelu")
        for cls, name in _ACTIVATION_MODULES.items():
            if type(module) is cls:
                return self.add_activation(name)
        if type(module) is nn.Sequential or isinstance(module, tnn.MLP):
            return all(self.add_module(child) for child in module)
        return False


class _LeafTracer(torch.fx.Tracer):
    """Keeps Linear and activation modules as single call_module nodes."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, _LINEAR_TYPES) or super().is_leaf_module(m, qualname)


def _chain_from_trace(model: nn.Module) -> Optional[List[DenseLayer]]:
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any untraceable forward simply means "not a chain"
        return None
    chain = _Chain()
    current = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                return None  # more than one input
            current = node
            continue
        if node.op == "output":
            return chain.layers if node.args[0] is current and chain.layers else None
        if not node.args or node.args[0] is not current or len(node.args) > 1:
            return None
        if node.op == "call_module":
            ok = chain.add_module(model.get_submodule(node.target))
        elif node.op == "call_function" and node.target in _ACTIVATION_FUNCTIONS:
            name = _ACTIVATION_FUNCTIONS[node.target]
            ok = (name != "gelu" or node.kwargs.get("approximate", "none") == "none") and \
                set(node.kwargs) <= {"inplace", "approximate"} and chain.add_activation(name)
        elif node.op == "call_method" and node.target in _ACTIVATION_METHODS and not node.kwargs:
            ok = chain.add_activation(_ACTIVATION_METHODS[node.target])
        else:
            ok = False
        if not ok:
            return None
        current = node
    return None


def extract_chain(model: nn.Module) -> Optional[List[DenseLayer]]:
    """The model as a chain of dense layers, or None if it is not one.

    The chain must use every parameter of the model exactly once, so that
    training it is training the model.
    """
    chain = _Chain()
    if chain.add_module(model):
        layers = chain.layers
    else:
        layers = _chain_from_trace(model)
    if not layers:
        return None
    used = [t for layer in layers for t in (layer.weight, layer.bias) if t is not None]
    model_params = list(model.parameters())
    if len(used) != len(model_params) or {id(t) for t in used} != {id(p) for p in model_params}:
        return None
    return layers
