"""Recognising models the training core can run: chains of dense layers.

A chain is Linear → [activation] → Linear → [activation] → … where each activation is identity,
ReLU, tanh, sigmoid or exact GELU. A module is recognised by the forward it runs, not by its
class: a Linear layer is any module whose class runs ``torch.nn.Linear.forward`` or
``torchext.nn.Linear.forward`` unchanged (so a subclass that overrides ``forward`` is not one),
with its weight and bias as plain Parameters; likewise the activations and ``nn.Sequential``.
Modules with forward or backward hooks, Parameters with gradient hooks, and forwards replaced on
an instance are not chains either: the core would skip what they do.

``extract_chain`` finds a chain in an ``nn.Sequential`` (nested ones included), a lone Linear, or
any module whose forward traces with ``torch.fx`` to such a chain (the walk-through's
``MyNetwork``). It returns a :class:`Chain` — the layers, and the ``watch`` list with which the
core re-checks at every call that those modules and Parameters are still the model's — or None,
and the Trainer runs eagerly.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import nn as tnn

_LINEAR_FORWARDS = {nn.Linear.forward, tnn.Linear.forward}
_ACTIVATION_FORWARDS = {nn.ReLU.forward: "relu", nn.Tanh.forward: "tanh",
                        nn.Sigmoid.forward: "sigmoid", nn.GELU.forward: "gelu"}
_ACTIVATION_FUNCTIONS = {
    torch.relu: "relu", F.relu: "relu", torch.tanh: "tanh", F.tanh: "tanh",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu",
}
_ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class DenseLayer:
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    activation: str = "identity"


@dataclass
class Chain:
    layers: List[DenseLayer]
    # (dict, key, expected, message): dict[key] must still be `expected`, or with key None,
    # len(dict) must still be `expected`; the message says what changed if not.
    watch: list = field(default_factory=list)


def _runs(module, forward):
    return type(module).forward is forward and "forward" not in vars(module)


def _hooked(module):
    return any(getattr(module, name, None) for name in _HOOK_DICTS)


def _label(name):
    return f"module {name!r}" if name else "top-level module"


class _ChainBuilder:
    """Builds the layer list and the watch list, refusing anything that is not a chain."""

    def __init__(self):
        self.layers: List[DenseLayer] = []
        self.watch = []

    def watch_module(self, module, name):
        for hooks in _HOOK_DICTS:
            if isinstance(getattr(module, hooks, None), dict):
                self.watch.append((getattr(module, hooks), None, 0,
                                   f"{_label(name)} got {hooks.strip('_').replace('_', ' ')} "
                                   "since the Trainer was built; the training core does not run "
                                   "hooks: build a new Trainer (it runs such a model eagerly)"))

    def watch_child(self, parent, key, child, name):
        self.watch.append((parent._modules, key, child,
                           f"{_label(name)} was replaced since the Trainer was built; build a "
                           "new Trainer for the model as it is now"))

    def add_linear(self, module, name) -> bool:
        weight, bias = module._parameters.get("weight"), module._parameters.get("bias", None)
        for p, attribute in ((weight, "weight"), (bias, "bias")):
            if p is None and attribute == "bias":
                continue
            # A plain Parameter (not, say, a parametrized weight computed at each forward),
            # without gradient hooks the core would not run.
            if not isinstance(p, nn.Parameter) or p is not getattr(module, attribute) or \
                    p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
                return False
        prefix = f"{name}." if name else ""
        for key, value in (("weight", weight), ("bias", bias)):
            self.watch.append((module._parameters, key, value,
                               f"parameter {prefix}{key} was replaced since the Trainer was built "
                               "(model.to() can make new Parameters, and so does "
                               "load_state_dict(assign=True)), so the Trainer and its optimizer "
                               "would train the old tensors; build the optimizer and the Trainer "
                               "again for the model as it is now"))
        self.layers.append(DenseLayer(weight, bias))
        return True

    def add_activation(self, name: str) -> bool:
        if name == "identity":
            return True
        if not self.layers or self.layers[-1].activation != "identity":
            return False  # an activation before any layer, or two in a row
        self.layers[-1].activation = name
        return True

    def add_module(self, module, name="") -> bool:
        if not isinstance(module, nn.Module) or _hooked(module):
            return False
        self.watch_module(module, name)
        if any(_runs(module, forward) for forward in _LINEAR_FORWARDS):
            return self.add_linear(module, name)
        if _runs(module, nn.Identity.forward):
            return True
        for forward, activation in _ACTIVATION_FORWARDS.items():
            if _runs(module, forward):
                if activation == "gelu" and module.approximate != "none":
                    return False
                return self.add_activation(activation)
        if _runs(module, nn.Sequential.forward):
            self.watch.append((module._modules, None, len(module._modules),
                               f"list of layers in {_label(name)} changed since the Trainer was "
                               "built; build a new Trainer for the model as it is now"))
            for key, child in module._modules.items():
                self.watch_child(module, key, child, f"{name}.{key}" if name else key)
                if not self.add_module(child, f"{name}.{key}" if name else key):
                    return False
            return True
        return False


class _LeafTracer(torch.fx.Tracer):
    """Keeps Linear layers as single call_module nodes."""

    def is_leaf_module(self, m, qualname):
        return any(_runs(m, forward) for forward in _LINEAR_FORWARDS) or \
            super().is_leaf_module(m, qualname)


def _chain_from_trace(model: nn.Module) -> Optional[_ChainBuilder]:
    if _hooked(model) or "forward" in vars(model):
        return None
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any untraceable forward simply means "not a chain"
        return None
    chain = _ChainBuilder()
    chain.watch_module(model, "")
    current = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                return None  # more than one input
            current = node
            continue
        if node.op == "output":
            return chain if node.args[0] is current and chain.layers else None
        if not node.args or node.args[0] is not current or len(node.args) > 1:
            return None
        if node.op == "call_module":
            parent = model
            for part in node.target.split("."):  # watch every module on the way
                child = parent._modules.get(part)
                chain.watch_child(parent, part, child, node.target)
                parent = child
            ok = chain.add_module(parent, node.target)
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


def extract_chain(model: nn.Module) -> Optional[Chain]:
    """The model as a chain of dense layers, or None if it is not one.

    The chain must use every parameter of the model exactly once, so that training it is
    training the model.
    """
    chain = _ChainBuilder()
    if not chain.add_module(model):
        chain = _chain_from_trace(model)
    if chain is None or not chain.layers:
        return None
    used = [t for layer in chain.layers for t in (layer.weight, layer.bias) if t is not None]
    model_params = list(model.parameters())
    if len(used) != len(model_params) or {id(t) for t in used} != {id(p) for p in model_params}:
        return None
    return Chain(chain.layers, chain.watch)
