"""Training the core and the stock loop side by side, for the tests of the core's CPU kernels.

``train_both`` runs a few steps of ``torchext.Trainer`` and of the stock loop from the same
start; ``assert_matches_stock`` compares the two at ``TOL``; ``assert_thread_count_changes_no_bit``
trains on 1 and on 2 threads inside the given pins and requires the same bits.
"""

import contextlib
import copy

import torch
from torch import nn
from trainer_support import stock_step

import torchext
from torchext.nn import MLP


def shape_ids(shapes):
    """Test ids of (sizes, batch, activation, ...) shapes: "20-30-30-40-B128-relu"."""
    return ["-".join(map(str, s[0])) + f"-B{s[1]}-{s[2]}" for s in shapes]


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def data(sizes, batch, loss, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, sizes[0], generator=gen, dtype=dtype)
    if loss == "mse":
        return x, torch.randn(batch, sizes[-1], generator=gen, dtype=dtype)
    return x, torch.randint(0, sizes[-1], (batch,), generator=gen)


def train_both(shape, dtype, steps=3, make_model=None):
    """The core and the stock loop after ``steps`` steps: (model, reference model, losses).

    ``shape`` is (sizes, batch, activation, loss, bias); ``make_model(dtype)``, if given, builds
    the model instead of ``MLP(sizes, ...)`` (``sizes`` then gives only the data's widths)."""
    sizes, batch, activation, loss, bias = shape
    torch.manual_seed(0)
    if make_model is None:
        model = MLP(sizes, activation=activation, bias=bias, dtype=dtype)
    else:
        model = make_model(dtype)
    ref = copy.deepcopy(model)
    options = dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **options), loss)
    assert trainer.backend == "cpu"
    ref_opt = torch.optim.SGD(ref.parameters(), **options)
    loss_fn = nn.MSELoss() if loss == "mse" else nn.CrossEntropyLoss()
    losses = []
    for step in range(steps):
        x, y = data(sizes, batch, loss, dtype, seed=step)
        losses.append((trainer.step(x, y), stock_step(ref, ref_opt, loss_fn, x, y)))
    return model, ref, losses


def assert_matches_stock(shape, dtype, make_model=None):
    model, ref, losses = train_both(shape, dtype, make_model=make_model)
    for got, expected in losses:
        torch.testing.assert_close(got, expected, **TOL[dtype])
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


def assert_thread_count_changes_no_bit(shape, *pins, make_model=None):
    """float32 training on 1 and on 2 threads, inside the context managers ``pins``."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with contextlib.ExitStack() as stack:
                for pin in pins:
                    stack.enter_context(pin())
                model, _, losses = train_both(shape, torch.float32, make_model=make_model)
            results.append(([p.detach().clone() for p in model.parameters()], losses))
    finally:
        torch.set_num_threads(threads)
    (one, one_losses), (two, two_losses) = results
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one_losses, two_losses))
