"""torchext.Trainer checkpoints (save/load/resume, atomic writes, stock interop)
and its errors on bad input, each of which must leave the model and the
optimizer state exactly as they were.
"""


import pytest
import torch
from torch import nn
from trainer_support import assert_unchanged, snapshot

import torchext
from torchext.nn import MLP


def seed_setup(dtype=torch.float64, loss="mse", seed=0):
    torch.manual_seed(seed)
    model = MLP([20, 30, 30, 40], dtype=dtype)
    opt = torchext.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    return model, opt, torchext.Trainer(model, opt, loss)


def batches(count, dtype=torch.float64, loss="mse", start=0):
    for i in range(start, start + count):
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(32, 20, generator=gen, dtype=dtype)
        y = (torch.randn(32, 40, generator=gen, dtype=dtype) if loss == "mse"
             else torch.randint(0, 40, (32,), generator=gen))
        yield x, y


# ---------------------------------------------------------------------------
# Checkpoints


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    model, opt, trainer = seed_setup()
    for x, y in batches(10):
        trainer.step(x, y)
    trainer.save(tmp_path / "ckpt.pt")
    uninterrupted = [trainer.step(x, y).item() for x, y in batches(10, start=10)]

    fresh_model, fresh_opt, resumed = seed_setup(seed=123)  # different initial weights
    resumed.load(tmp_path / "ckpt.pt")
    assert resumed.steps == 10
    resumed_losses = [resumed.step(x, y).item() for x, y in batches(10, start=10)]
    assert resumed_losses == uninterrupted  # bit-identical: same kernels, same inputs
    for p, q in zip(fresh_model.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_is_a_plain_dict_that_stock_pytorch_loads(tmp_path):
    model, opt, trainer = seed_setup()
    for x, y in batches(3):
        trainer.step(x, y)
    trainer.save(tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt")  # weights_only=True is the default
    assert type(ckpt) is dict and {"model", "optimizer", "step"} <= ckpt.keys()
    stock = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(),
                          nn.Linear(30, 40)).double()
    stock.load_state_dict(ckpt["model"])
    stock_opt = torch.optim.SGD(stock.parameters(), lr=1e-2, momentum=0.9)
    stock_opt.load_state_dict(ckpt["optimizer"])
    for x, y in batches(5, start=3):
        trainer.step(x, y)
        stock_opt.zero_grad()
        nn.functional.mse_loss(stock(x), y).backward()
        stock_opt.step()
    for p, q in zip(model.parameters(), stock.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_save_is_atomic_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    model, opt, trainer = seed_setup()
    path = tmp_path / "ckpt.pt"
    trainer.save(path)
    before = path.read_bytes()
    for x, y in batches(2):
        trainer.step(x, y)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_loading_a_mismatched_checkpoint_changes_nothing(tmp_path):
    model, opt, trainer = seed_setup()
    for x, y in batches(2):
        trainer.step(x, y)
    before = snapshot(model, opt)
    other_model = MLP([20, 30, 41], dtype=torch.float64)
    other = torchext.Trainer(other_model, torchext.optim.SGD(other_model.parameters(), lr=0.1))
    bad = other.state_dict()
    with pytest.raises(ValueError, match="checkpoint does not match the model"):
        trainer.load_state_dict(bad)
    with pytest.raises(ValueError, match="missing optimizer"):
        trainer.load_state_dict({"model": model.state_dict(), "step": 1})
    assert_unchanged(model, opt, before)


# ---------------------------------------------------------------------------
# Bad input: a clear error and nothing changed.


BAD_STEPS = {
    "input width": (lambda: (torch.randn(8, 21, dtype=torch.float64),
                             torch.randn(8, 40, dtype=torch.float64)),
                    "input has 21 features but the model takes 20"),
    "target shape": (lambda: (torch.randn(8, 20, dtype=torch.float64),
                              torch.randn(8, 39, dtype=torch.float64)),
                     r"target must have shape \[8, 40\] for mse, got \[8, 39\]"),
    "dtype": (lambda: (torch.randn(8, 20), torch.randn(8, 40)),
              "input is Float but the model is Double"),
    "device": (lambda: (torch.randn(8, 20, dtype=torch.float64, device="meta"),
                        torch.randn(8, 40, dtype=torch.float64)),
               "input is on meta but the model is on cpu"),
    "empty batch": (lambda: (torch.randn(0, 20, dtype=torch.float64),
                             torch.randn(0, 40, dtype=torch.float64)),
                    r"the input is empty \(0 rows\)"),
}


@pytest.mark.parametrize("case", list(BAD_STEPS))
def test_bad_step_raises_and_changes_nothing(case):
    model, opt, trainer = seed_setup()
    for x, y in batches(2):
        trainer.step(x, y)
    before = snapshot(model, opt)
    make, message = BAD_STEPS[case]
    with pytest.raises(RuntimeError, match=message):
        trainer.step(*make())
    assert_unchanged(model, opt, before)
    assert trainer.steps == 2


def test_class_index_out_of_range_raises_and_changes_nothing():
    model, opt, trainer = seed_setup(loss="cross_entropy")
    before = snapshot(model, opt)  # no step yet: no momentum buffers may appear either
    x = torch.randn(4, 20, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="class index 40 is out of range for 40 classes"):
        trainer.step(x, torch.tensor([0, 1, 40, 2]))
    with pytest.raises(RuntimeError, match="class index -1 is out of range"):
        trainer.fit(x, torch.tensor([0, -1, 3, 2]), progress=False)
    with pytest.raises(RuntimeError, match="must be int64 class indices"):
        trainer.step(x, torch.zeros(4, dtype=torch.int32))
    assert_unchanged(model, opt, before)
    assert len(opt.state) == 0


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
    (dict(batch_size=-3), ValueError, "batch_size must be a positive integer"),
    (dict(epochs=-1), ValueError, "epochs must be a non-negative integer"),
])
def test_bad_fit_arguments(kwargs, exc, message):
    model, opt, trainer = seed_setup()
    before = snapshot(model, opt)
    x, y = next(batches(1))
    with pytest.raises(exc, match=message):
        trainer.fit(x, y, progress=False, **kwargs)
    assert_unchanged(model, opt, before)


def test_bad_data_for_fit_and_evaluate():
    model, opt, trainer = seed_setup()
    before = snapshot(model, opt)
    x = torch.randn(10, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        trainer.fit(x, torch.randn(9, 40, dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match=r"the data is empty \(0 samples\)"):
        trainer.fit(x[:0], torch.randn(0, 40, dtype=torch.float64), progress=False)
    with pytest.raises(ValueError, match="x has 10 samples but y has 9"):
        trainer.evaluate(x, torch.randn(9, 40, dtype=torch.float64))
    assert_unchanged(model, opt, before)


def test_optimizer_that_does_not_own_the_parameters_is_refused():
    model = MLP([4, 5, 3])
    other = MLP([4, 5, 3])
    with pytest.raises(ValueError, match="the optimizer does not own the model's parameters: "
                                         "0.weight, 0.bias, 2.weight, 2.bias"):
        torchext.Trainer(model, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "l1")


def test_non_finite_loss_stops_fit_naming_epoch_and_step():
    model, opt, trainer = seed_setup()
    x = torch.randn(64, 20, dtype=torch.float64)
    y = torch.randn(64, 40, dtype=torch.float64)
    y[40] = float("nan")  # the third batch of 16 holds row 40 when not shuffled
    with pytest.raises(RuntimeError, match="the loss became nan at epoch 0, step 2"):
        trainer.fit(x, y, batch_size=16, shuffle=False, progress=False)
