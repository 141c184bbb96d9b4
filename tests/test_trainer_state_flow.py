"""The Trainer's state after anything: exceptions, Ctrl-C, changed or frozen parameters, threads.

After any call or exception, the model's parameters, ``optimizer.state`` and ``trainer.steps``
must agree with each other and with the updates actually applied. Each test compares with the
stock loop (``zero_grad(); loss.backward(); SGD.step()``) run for that many updates, computed in
the same test. Backends: the fused CPU core and the ATen path (CUDA's, run on the CPU as the
reference, with its once-per-epoch loss check).
"""

import copy
import math
import os
import signal
import threading
import time

import pytest
import torch
from torch import nn
from trainer_support import assert_unchanged, snapshot
from trainer_support import stock_step as stock_loop_step

import torchext
from torchext.nn import MLP

SIZES = [6, 9, 7, 5]
OPTIONS = dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=1e-3)
BACKENDS = ["core", "reference"]


def setup(backend="core", dtype=torch.float64, seed=0, sizes=SIZES, activation="tanh",
          **options):
    torch.manual_seed(seed)
    model = MLP(sizes, activation=activation, dtype=dtype)
    ref = copy.deepcopy(model)
    opts = {**OPTIONS, **options}
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), **opts))
    if backend == "reference":
        trainer._core.use_reference_kernels(True)
    return model, trainer, ref, torch.optim.SGD(ref.parameters(), **opts)


def data(n, sizes=SIZES, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, sizes[0], generator=gen, dtype=dtype),
            torch.randn(n, sizes[-1], generator=gen, dtype=dtype))


def stock_step(model, opt, x, y):
    return stock_loop_step(model, opt, nn.functional.mse_loss, x, y)


def stock_fit_steps(model, opt, x, y, batch, generator, steps):
    """The first ``steps`` updates of Trainer.fit's schedule, with the stock loop."""
    done, samples = 0, x.shape[0]
    while done < steps:
        order = torch.randperm(samples, generator=generator)
        for start in range(0, samples, batch):
            if done == steps:
                return
            index = order[start:start + batch]
            stock_step(model, opt, x[index], y[index])
            done += 1


def assert_same_state(model, trainer, ref, ref_opt, rtol=1e-10):
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-12)
        mine = trainer.optimizer.state.get(p, {}).get("momentum_buffer")
        theirs = ref_opt.state.get(q, {}).get("momentum_buffer")
        assert (mine is None) == (theirs is None)
        if mine is not None:
            torch.testing.assert_close(mine, theirs, rtol=rtol, atol=1e-12)


# ---------------------------------------------------------------------------- exceptions in fit

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stop_after", [1, 7])
def test_a_raising_progress_callback_leaves_consistent_state(backend, stop_after):
    model, trainer, ref, ref_opt = setup(backend)
    x, y = data(64)
    calls = []

    def callback(epoch, step, steps, loss):
        calls.append(step)
        if len(calls) == stop_after:
            raise ValueError("stop here")

    with pytest.raises(ValueError, match="stop here"):
        trainer.fit(x, y, epochs=20, batch_size=16, generator=torch.Generator().manual_seed(4),
                    progress=callback)
    applied = trainer.steps
    assert applied >= stop_after  # the callback runs after a step is applied
    stock_fit_steps(ref, ref_opt, x, y, 16, torch.Generator().manual_seed(4), applied)
    assert_same_state(model, trainer, ref, ref_opt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_step", [0, 5])
def test_non_finite_loss_stops_fit_before_its_update(backend, bad_step):
    model, trainer, ref, ref_opt = setup(backend)
    x, y = data(128)
    y[bad_step * 16 + 3, 2] = math.inf  # unshuffled: the bad row is in step bad_step
    with pytest.raises(RuntimeError, match=f"the loss became (inf|nan) at epoch 0, step "
                                           f"{bad_step}; training stopped"):
        trainer.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False)
    assert trainer.steps == bad_step
    for s in range(bad_step):
        stock_step(ref, ref_opt, x[s * 16:(s + 1) * 16], y[s * 16:(s + 1) * 16])
    assert_same_state(model, trainer, ref, ref_opt)  # no momentum buffer when bad_step == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_loss_in_a_later_epoch(backend):
    model, trainer, ref, ref_opt = setup(backend, activation="identity", lr=0.2)
    x, y = data(64)
    with pytest.raises(RuntimeError, match="the loss became (inf|nan) at epoch [1-9]"):
        trainer.fit(x * 10, y, epochs=500, batch_size=16, shuffle=False, progress=False)
    applied = trainer.steps
    for s in range(applied):
        rows = slice((s % 4) * 16, (s % 4 + 1) * 16)
        stock_step(ref, ref_opt, x[rows] * 10, y[rows])
    assert_same_state(model, trainer, ref, ref_opt, rtol=1e-8)
    assert all(torch.isfinite(p).all() for p in model.parameters())


# Long enough that only Ctrl-C ends these fits early, short enough that a lost signal fails the
# test (DID NOT RAISE) instead of hanging the run.
UNTIL_INTERRUPTED = 10**4


@pytest.fixture
def python_sigint_handler():
    """SIGINT raising KeyboardInterrupt, as in an interactive Python.

    A Python started with SIGINT ignored (e.g. as a background job of a non-interactive shell)
    keeps it ignored, and then Ctrl-C cannot reach anything; the tests must not depend on how
    the test runner was started.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _interrupt_soon(delay):
    pid = os.getpid()
    timer = threading.Timer(delay, lambda: os.kill(pid, signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_stops_fit_after_the_current_step(backend, python_sigint_handler):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only on the main thread")
    model, trainer, ref, ref_opt = setup(backend, sizes=[6, 64, 64, 5])
    x, y = data(512, sizes=[6, 64, 64, 5])
    timer = _interrupt_soon(0.3)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=UNTIL_INTERRUPTED, batch_size=16,
                    generator=torch.Generator().manual_seed(2), progress=False)
    waited = time.monotonic() - start
    timer.join()
    assert 0 < trainer.steps < UNTIL_INTERRUPTED * 32 and waited < 30
    stock_fit_steps(ref, ref_opt, x, y, 16, torch.Generator().manual_seed(2), trainer.steps)
    assert_same_state(model, trainer, ref, ref_opt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_stops_a_long_evaluate(python_sigint_handler):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only on the main thread")
    model, trainer, _, _ = setup(sizes=[6, 256, 256, 5])
    x, y = data(4096, sizes=[6, 256, 256, 5])
    timer = _interrupt_soon(0.2)
    with pytest.raises(KeyboardInterrupt):
        for _ in range(UNTIL_INTERRUPTED):
            trainer.evaluate(x, y, batch_size=8)
    timer.join()


def test_ctrl_c_in_the_eager_loop_never_splits_an_update(python_sigint_handler):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach Python handlers only on the main thread")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.LayerNorm(9), nn.Linear(9, 5)).double()
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), **OPTIONS))
    assert trainer.backend == "eager"
    x, y = data(512)
    timer = _interrupt_soon(0.3)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, y, epochs=UNTIL_INTERRUPTED, batch_size=16,
                    generator=torch.Generator().manual_seed(2), progress=False)
    timer.join()
    ref_opt = torch.optim.SGD(ref.parameters(), **OPTIONS)
    stock_fit_steps(ref, ref_opt, x, y, 16, torch.Generator().manual_seed(2), trainer.steps)
    assert_same_state(model, trainer, ref, ref_opt)


# ---------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("backend", BACKENDS)
def test_a_parameter_frozen_after_construction_is_not_updated(backend):
    model, trainer, ref, ref_opt = setup(backend)
    for step in range(3):
        x, y = data(16, seed=step)
        trainer.step(x, y)
        stock_step(ref, ref_opt, x, y)
    model[2].weight.requires_grad_(False)  # the usual fine-tuning move
    ref[2].weight.requires_grad_(False)
    frozen_buffer = trainer.optimizer.state[model[2].weight]["momentum_buffer"].clone()
    for step in range(3, 8):
        x, y = data(16, seed=step)
        torch.testing.assert_close(trainer.step(x, y), stock_step(ref, ref_opt, x, y),
                                   rtol=1e-10, atol=1e-12)
    assert_same_state(model, trainer, ref, ref_opt)
    assert torch.equal(trainer.optimizer.state[model[2].weight]["momentum_buffer"], frozen_buffer)
    model[2].weight.requires_grad_(True)
    ref[2].weight.requires_grad_(True)
    x, y = data(16, seed=9)
    trainer.fit(x, y, epochs=2, batch_size=4, shuffle=False, progress=False)
    for _ in range(2):
        for start in range(0, 16, 4):
            stock_step(ref, ref_opt, x[start:start + 4], y[start:start + 4])
    assert_same_state(model, trainer, ref, ref_opt)


def test_frozen_from_the_start_and_not_in_the_optimizer():
    torch.manual_seed(0)
    model = MLP(SIZES, dtype=torch.float64)
    for p in model[0].parameters():
        p.requires_grad_(False)
    ref = copy.deepcopy(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainer = torchext.Trainer(model, torch.optim.SGD(trainable, lr=0.1, momentum=0.5))
    assert trainer.backend == "cpu"
    ref_opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.1,
                              momentum=0.5)
    for step in range(4):
        x, y = data(16, seed=step)
        trainer.step(x, y)
        stock_step(ref, ref_opt, x, y)
    assert_same_state(model, trainer, ref, ref_opt)
    model[0].weight.requires_grad_(True)  # trainable now, but the optimizer does not own it
    before = snapshot(model, trainer.optimizer)
    with pytest.raises(RuntimeError, match="parameter 0 requires grad but is in no optimizer "
                                           "group"):
        trainer.step(*data(16))
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(RuntimeError, match="no parameter of the model requires grad"):
        trainer.step(*data(16))
    assert_unchanged(model, trainer.optimizer, before)


@pytest.mark.parametrize("how", ["load_state_dict(assign=True)", "new Parameter"])
def test_replaced_parameters_are_refused_and_nothing_changes(how):
    model, trainer, _, _ = setup()
    trainer.step(*data(16))
    before = snapshot(model, trainer.optimizer)
    if how == "new Parameter":
        model[0].weight = nn.Parameter(model[0].weight.detach().clone())
    else:
        model.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)
    for call in (lambda: trainer.step(*data(16)), lambda: trainer.evaluate(*data(16)),
                 lambda: trainer.fit(*data(16), progress=False)):
        with pytest.raises(ValueError, match="parameter 0.weight was replaced since the Trainer "
                                             "was built"):
            call()
    assert_unchanged(model, trainer.optimizer, before)
    assert trainer.steps == 1


def test_replaced_or_added_modules_are_refused():
    model, trainer, _, _ = setup()
    model[1] = nn.ReLU()
    with pytest.raises(ValueError, match="module '1' was replaced"):
        trainer.step(*data(16))
    model2, trainer2, _, _ = setup()
    model2.append(nn.Tanh())
    with pytest.raises(ValueError, match="list of layers in top-level module changed"):
        trainer2.evaluate(*data(16))
    model3, trainer3, _, _ = setup()
    model3[0].register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="module '0' got forward hooks"):
        trainer3.step(*data(16))


def test_a_model_moved_to_another_device_in_new_parameters_is_refused():
    model, trainer, _, _ = setup()
    model.to("meta")  # new Parameter objects, like a move between some devices
    with pytest.raises(ValueError, match="was replaced since the Trainer was built"):
        trainer.step(*data(16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_converted_in_place_is_picked_up(backend):
    model, trainer, ref, ref_opt = setup(backend, dtype=torch.float32, momentum=0.0,
                                         dampening=0.0)
    trainer.step(*data(16, dtype=torch.float32))
    stock_step(ref, ref_opt, *data(16, dtype=torch.float32))
    model.double()  # the same Parameter objects, new dtype
    ref.double()
    for step in range(5):
        x, y = data(16, seed=step)
        torch.testing.assert_close(trainer.step(x, y), stock_step(ref, ref_opt, x, y),
                                   rtol=1e-6, atol=1e-8)
    assert_same_state(model, trainer, ref, ref_opt, rtol=1e-6)


def test_momentum_buffers_of_another_dtype_are_refused_after_a_conversion():
    model, trainer, _, _ = setup(dtype=torch.float32)
    trainer.step(*data(16, dtype=torch.float32))
    model.double()
    before = snapshot(model, trainer.optimizer)
    with pytest.raises(RuntimeError, match="the momentum buffer of parameter 0 .* is Float"):
        trainer.step(*data(16))
    assert_unchanged(model, trainer.optimizer, before)


def test_a_reshaped_parameter_is_refused_with_nothing_changed():
    model, trainer, _, _ = setup()
    trainer.step(*data(16))
    model[0].weight.data = torch.randn(3000, SIZES[0], dtype=torch.float64)
    before = snapshot(model, trainer.optimizer)
    for call in (lambda: trainer.step(*data(16)), lambda: trainer.evaluate(*data(64))):
        with pytest.raises(RuntimeError, match=r"changed since the trainer was built .*layer 0 "
                                               r"bias must have shape \[3000\]"):
            call()
    assert_unchanged(model, trainer.optimizer, before)


def test_a_consistently_reshaped_model_is_picked_up():
    model, trainer, ref, ref_opt = setup(momentum=0.0, dampening=0.0)
    trainer.step(*data(16))
    stock_step(ref, ref_opt, *data(16))
    for m in (model, ref):
        torch.manual_seed(5)
        m[0].weight.data = torch.randn(12, SIZES[0], dtype=torch.float64)
        m[0].bias.data = torch.randn(12, dtype=torch.float64)
        m[2].weight.data = torch.randn(SIZES[2], 12, dtype=torch.float64)
    for step in range(3):
        x, y = data(16, seed=step)
        torch.testing.assert_close(trainer.step(x, y), stock_step(ref, ref_opt, x, y),
                                   rtol=1e-10, atol=1e-12)
    assert_same_state(model, trainer, ref, ref_opt)


# ---------------------------------------------------------------------------- validation first

def test_a_bad_buffer_in_group_two_changes_nothing():
    torch.manual_seed(0)
    model = MLP(SIZES, dtype=torch.float64)
    opt = torchext.optim.SGD([{"params": model[0].parameters()},
                              {"params": list(model[2].parameters()) +
                                         list(model[4].parameters())}], lr=0.1, momentum=0.9)
    trainer = torchext.Trainer(model, opt)
    opt.state[model[4].weight]["momentum_buffer"] = torch.zeros(3, 3, dtype=torch.float64)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="the momentum buffer of parameter 4 .*group 1"):
        trainer.step(*data(16))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model[0].weight not in opt.state  # group 0 got no buffer either
    assert trainer.steps == 0


@pytest.mark.parametrize("lr", ["0.1", None, [0.1]])
def test_a_bad_learning_rate_in_a_group_is_a_clear_error(lr):
    model, trainer, _, _ = setup()
    trainer.optimizer.param_groups[0]["lr"] = lr
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\] must be a number"):
        trainer.step(*data(16))
    assert trainer.steps == 0 and not trainer.optimizer.state


@pytest.mark.parametrize("damage, exc, match", [
    (lambda opt: opt.param_groups[0].pop("momentum"), KeyError,
     r"param_groups\[0\] has no 'momentum'"),
    (lambda opt: setattr(opt, "state", []), TypeError, "optimizer.state must be a dict"),
    (lambda opt: opt.param_groups.__setitem__(0, [1]), TypeError,
     r"param_groups\[0\] must be a dict"),
])
def test_a_damaged_optimizer_is_a_clear_error_with_nothing_changed(damage, exc, match):
    model, trainer, _, _ = setup()
    trainer.step(*data(16))  # buffers exist: the failing read comes after a good one
    before = copy.deepcopy(model.state_dict())
    damage(trainer.optimizer)
    with pytest.raises(exc, match=match):
        trainer.step(*data(16))
    assert trainer.steps == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_core_reads_the_optimizer_as_it_is_at_each_step():
    """Groups whose params are tuples, a learning rate changed between steps, and
    state replaced by load_state_dict are all read afresh, as the stock loop reads them."""
    torch.manual_seed(0)
    model = MLP(SIZES, dtype=torch.float64)
    reference = copy.deepcopy(model)
    opt = torchext.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    stock_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"] = tuple(opt.param_groups[0]["params"])
    trainer = torchext.Trainer(model, opt)
    for step in range(4):
        x, y = data(16, seed=step)
        if step == 2:
            for group in (opt.param_groups[0], stock_opt.param_groups[0]):
                group["lr"] = 0.05
            saved = copy.deepcopy(opt.state_dict())
            opt.load_state_dict(saved)  # new state dict, new buffer tensors
        trainer.step(x, y)
        stock_step(reference, stock_opt, x, y)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("call, exc, match", [
    (lambda t: t.step([[1.0] * 6], torch.zeros(1, 5)), TypeError, "x must be a tensor, got list"),
    (lambda t: t.step(torch.zeros(1, 6), None), TypeError, "y must be a tensor"),
    (lambda t: t.fit(*data(8), epochs=2**70), ValueError, "epochs must be at most"),
    (lambda t: t.fit(*data(8), batch_size=2**70), ValueError, "batch_size must be at most"),
    (lambda t: t.fit(*data(8), epochs=2**62, batch_size=1), ValueError, "overflow the step"),
    (lambda t: t.fit(*data(8), epochs=1.5), ValueError, "epochs must be a non-negative integer"),
    (lambda t: t.fit(*data(8), shuffle="yes"), TypeError, "shuffle must be a bool"),
    (lambda t: t.fit(*data(8), generator=5), TypeError, "generator must be a torch.Generator"),
    (lambda t: t.fit(*data(8), progress="yes"), TypeError, "progress must be None"),
    (lambda t: t.evaluate(*data(8), batch_size=2**70), ValueError, "batch_size must be at most"),
    (lambda t: t.evaluate([1.0], [1.0]), TypeError, "x must be a tensor"),
])
def test_bad_python_arguments_get_clear_errors(call, exc, match):
    model, trainer, _, _ = setup()
    before = snapshot(model, trainer.optimizer)
    with pytest.raises(exc, match=match):
        call(trainer)
    assert_unchanged(model, trainer.optimizer, before)


def test_bad_construction_arguments():
    model = MLP(SIZES)
    with pytest.raises(TypeError, match="loss must be 'mse', 'cross_entropy' or an nn.Module"):
        torchext.Trainer(model, torch.optim.SGD(model.parameters()), ["mse"])


# ---------------------------------------------------------------------------- threads

@pytest.mark.parametrize("backend", BACKENDS)
def test_two_threads_stepping_one_trainer_equal_serial_steps(backend):
    model, trainer, ref, ref_opt = setup(backend, sizes=[20, 64, 64, 40])
    x, y = data(128, sizes=[20, 64, 64, 40])
    threads = [threading.Thread(target=lambda: [trainer.step(x, y) for _ in range(60)])
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trainer.steps == 120
    for _ in range(120):
        stock_step(ref, ref_opt, x, y)
    assert_same_state(model, trainer, ref, ref_opt, rtol=1e-8)


def test_calls_from_inside_a_progress_callback():
    model, trainer, _, _ = setup()
    seen = []

    def callback(*args):
        seen.append(trainer.state_dict()["step"])  # reads are fine: between two steps
        with pytest.raises(RuntimeError, match="called from inside a running call on the same "
                                               "trainer"):
            trainer.evaluate(*data(8))
        with pytest.raises(RuntimeError, match="cannot nest"):
            trainer.load_state_dict(trainer.state_dict())

    trainer.fit(*data(64), epochs=2, batch_size=16, progress=callback)
    assert seen[-1] == trainer.steps == 8
