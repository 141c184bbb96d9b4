"""Mixed precision: the loss scaler, checkpoints and resume, hand-over, and bad input.

``"16-mixed"`` behaves like ``torch.amp.GradScaler`` (same defaults, same growth and backoff, a
skipped step leaves parameters and momentum buffers bit-identical) because the trainer steps a
real GradScaler's own state; every case is compared with a stock GradScaler loop in the same test.
"""

import copy

import pytest
import torch
from ddp_support import ranks  # noqa: F401 - the fixture
from torch import nn
from trainer_support import assert_unchanged, snapshot, stock_mixed_step

import torchext
from torchext.nn import MLP

SEED = [20, 30, 30, 40]
BACKENDS = ["core", "reference"]
PRECISIONS = [None, "bf16-mixed", "16-mixed"]
DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def data(n, sizes, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, sizes[0], generator=gen) * scale,
            torch.randn(n, sizes[-1], generator=gen))


def fp16_pair(backend, scaler_args, sizes=SEED, activation="relu"):
    """(trainer, stock model, stock optimizer, stock scaler) from the same initial state."""
    torch.manual_seed(0)
    model = MLP(sizes, activation=activation)
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torchext.optim.SGD(model.parameters(), lr=1e-2,
                                                         momentum=0.9),
                               "mse", precision="16-mixed",
                               scaler=torch.amp.GradScaler("cpu", **scaler_args))
    if backend == "reference":
        trainer._core.use_reference_kernels(True)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
    return trainer, ref, ref_opt, torch.amp.GradScaler("cpu", **scaler_args)


# ---------------------------------------------------------------------------- loss scaling

@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_steps_are_skipped_and_the_scale_backs_off_as_gradscaler(backend):
    # 2**40 makes the float16 gradients overflow: GradScaler skips and halves until they fit.
    trainer, ref, ref_opt, ref_scaler = fp16_pair(backend, dict(init_scale=2.0**40,
                                                                growth_interval=4))
    scales, skipped = [], 0
    for step in range(40):
        x, y = data(16, SEED, step)
        before = snapshot(trainer.model, trainer.optimizer)
        scale = trainer.scaler.get_scale()
        got = trainer.step(x, y)
        expected = stock_mixed_step(ref, ref_opt, nn.MSELoss(), x, y, torch.float16, ref_scaler)
        torch.testing.assert_close(got, expected, rtol=2e-2, atol=0)
        if trainer.scaler.get_scale() < scale:  # a skipped step: nothing changed, bit for bit
            skipped += 1
            assert_unchanged(trainer.model, trainer.optimizer, before)
        scales.append(trainer.scaler.get_scale())
        assert trainer.scaler.state_dict() == ref_scaler.state_dict()
    assert skipped >= 10 and trainer.steps == 40
    assert max(scales[-10:]) > min(scales[-10:])  # grew again after 4 clean steps
    for p, q in zip(trainer.model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1.6e-2, atol=2**-8 * q.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_step_skipped_creates_no_momentum_buffer(backend):
    trainer, *_ = fp16_pair(backend, dict(init_scale=2.0**60))
    x, y = data(16, SEED, 0)
    before = snapshot(trainer.model, trainer.optimizer)
    trainer.step(x, y)
    assert_unchanged(trainer.model, trainer.optimizer, before)
    assert not trainer.optimizer.state and trainer.scaler.get_scale() == 2.0**59
    assert trainer.scaler.state_dict()["_growth_tracker"] == 0


def test_default_scaler_has_gradscaler_defaults_and_disabled_scaler_never_skips():
    model = MLP(SEED)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "mse",
                               precision="16-mixed")
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    assert trainer.scaler.state_dict() == torch.amp.GradScaler("cpu").state_dict()
    trainer.step(*data(8, SEED, 0))
    assert trainer.scaler.state_dict()["_growth_tracker"] == 1

    torch.manual_seed(0)
    model = MLP(SEED)
    ref = copy.deepcopy(model)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "mse",
                               precision="16-mixed",
                               scaler=torch.amp.GradScaler("cpu", enabled=False))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(5):
        x, y = data(8, SEED, step)
        trainer.step(x, y)
        stock_mixed_step(ref, ref_opt, nn.MSELoss(), x, y, torch.float16,
                         torch.amp.GradScaler("cpu", enabled=False))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1.6e-2, atol=1e-4)
    assert trainer.scaler.state_dict() == {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_stock_loop_takes_over_with_the_same_scaler(backend):
    trainer, ref, ref_opt, ref_scaler = fp16_pair(backend, dict(init_scale=2.0**30,
                                                                growth_interval=3))
    model, opt, scaler = trainer.model, trainer.optimizer, trainer.scaler
    for step in range(30):
        x, y = data(16, SEED, step)
        if 10 <= step < 20:  # the user's own GradScaler loop, on the same objects
            stock_mixed_step(model, opt, nn.MSELoss(), x, y, torch.float16, scaler)
        else:
            trainer.step(x, y)
        stock_mixed_step(ref, ref_opt, nn.MSELoss(), x, y, torch.float16, ref_scaler)
        assert scaler.state_dict() == ref_scaler.state_dict()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1.6e-2, atol=2**-8 * q.abs().max().item())


def test_scaler_settings_are_read_at_every_step():
    # Grows x2 after steps 0-1; from step 3 on, x4 every 3 clean steps: the tracker (1 after
    # step 2) reaches 3 at step 4.
    trainer, ref, ref_opt, ref_scaler = fp16_pair("core", dict(growth_interval=2))
    for step in range(6):
        if step == 3:
            for s in (trainer.scaler, ref_scaler):
                s.set_growth_factor(4.0)
                s.set_growth_interval(3)
        x, y = data(16, SEED, step)
        trainer.step(x, y)
        stock_mixed_step(ref, ref_opt, nn.MSELoss(), x, y, torch.float16, ref_scaler)
    assert trainer.scaler.state_dict() == ref_scaler.state_dict()
    assert trainer.scaler.get_scale() == 2.0**16 * 2 * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_with_a_non_finite_loss_keeps_the_scaler_of_the_last_good_step(backend):
    trainer, *_ = fp16_pair(backend, dict(growth_interval=2))
    x, y = data(64, SEED, 0)
    x[40] = float("nan")  # the third batch of 16, in order
    with pytest.raises(RuntimeError, match="epoch 0, step 2"):
        trainer.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False)
    assert trainer.steps == 2
    # Two clean steps, then the scale grew once (interval 2), and nothing after.
    assert trainer.scaler.state_dict()["scale"] == 2.0**17
    assert trainer.scaler.state_dict()["_growth_tracker"] == 0


# ---------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_checkpoint_and_resume_continue_exactly(precision, backend, tmp_path):
    def make(seed):
        torch.manual_seed(seed)
        model = MLP(SEED, activation="gelu")
        opt = torchext.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=3) \
            if precision == "16-mixed" else None
        trainer = torchext.Trainer(model, opt, "mse", precision=precision, scaler=scaler)
        if backend == "reference":
            trainer._core.use_reference_kernels(True)
        return trainer

    x, y = data(96, SEED, 1)
    straight = make(0)
    straight.fit(x, y, epochs=2, batch_size=16, shuffle=False, progress=False)
    first = make(0)
    first.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False)
    first.save(tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt")
    assert ("scaler" in state) == (precision == "16-mixed")
    if precision == "16-mixed":
        assert state["scaler"] == first.scaler.state_dict()
    resumed = make(1)  # other initial weights: all of it comes from the checkpoint
    resumed.load(tmp_path / "ckpt.pt")
    resumed.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False)
    assert resumed.steps == straight.steps == 12
    for p, q in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(p, q)
    if precision == "16-mixed":
        assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert resumed.evaluate(x, y) == straight.evaluate(x, y)


def test_a_checkpoint_loads_into_a_stock_gradscaler_and_back(tmp_path):
    trainer, *_ = fp16_pair("core", dict(init_scale=2.0**10, growth_interval=1))
    for step in range(3):
        trainer.step(*data(16, SEED, step))
    trainer.save(tmp_path / "ckpt.pt")
    stock = torch.amp.GradScaler("cpu")
    stock.load_state_dict(torch.load(tmp_path / "ckpt.pt")["scaler"])
    assert stock.get_scale() == 2.0**13
    # A float32 or bf16 checkpoint (no "scaler") leaves a 16-mixed trainer's scaler alone.
    other, *_ = fp16_pair("core", dict(init_scale=64.0))
    state = trainer.state_dict()
    del state["scaler"]
    other.load_state_dict(state)
    assert other.scaler.get_scale() == 64.0


@pytest.mark.parametrize("bad,message", [
    ({"scale": -1.0}, "scale must be a finite positive number"),
    ({"scale": float("inf")}, "scale must be a finite positive number"),
    ({"growth_factor": 1.0}, "growth_factor must be a finite number > 1"),
    ({"backoff_factor": 1.5}, r"backoff_factor must be a number in \(0, 1\)"),
    ({"growth_interval": 0}, "growth_interval must be an integer"),
    ({"_growth_tracker": "3"}, "_growth_tracker must be an integer"),
    ({"scale": None}, "scale must be a finite positive number"),
])
def test_a_bad_scaler_state_is_refused_and_nothing_changes(bad, message):
    trainer, *_ = fp16_pair("core", {})
    trainer.step(*data(16, SEED, 0))
    state = copy.deepcopy(trainer.state_dict())
    state["scaler"].update(bad)
    state["step"] = 99
    before = snapshot(trainer.model, trainer.optimizer)
    scaler_before = trainer.scaler.state_dict()
    with pytest.raises(ValueError, match=message):
        trainer.load_state_dict(state)
    assert_unchanged(trainer.model, trainer.optimizer, before)
    assert trainer.scaler.state_dict() == scaler_before and trainer.steps == 1
    with pytest.raises(ValueError, match="scaler state must be a dict"):
        trainer.load_state_dict({**state, "scaler": [1.0]})


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("precision", ["bf16", "fp16", "16", 16, "32-true", "BF16-MIXED", ""])
def test_unknown_precisions_are_refused(precision):
    model = MLP(SEED)
    with pytest.raises(ValueError, match="precision must be None, 'bf16-mixed' or '16-mixed'"):
        torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                         precision=precision)


def test_bad_models_and_scalers_are_refused():
    model = MLP(SEED, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="trains float32 models.*float64.*model.float()"):
        torchext.Trainer(model, opt, precision="bf16-mixed")
    model = MLP(SEED)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="a scaler is used only with precision='16-mixed'"):
        torchext.Trainer(model, opt, precision="bf16-mixed", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler"):
        torchext.Trainer(model, opt, precision="16-mixed", scaler=object())


def test_a_model_converted_after_construction_is_refused_and_nothing_changes():
    model = MLP(SEED)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = torchext.Trainer(model, opt, precision="bf16-mixed")
    trainer.step(*data(8, SEED, 0))
    model.double()
    before = snapshot(model, opt)
    x, y = data(8, SEED, 1)
    with pytest.raises(RuntimeError, match="bf16-mixed trains float32 parameters"):
        trainer.step(x.double(), y.double())
    assert_unchanged(model, opt, before)
    model.float()  # back as it was: training goes on
    trainer.step(x, y)
    assert trainer.steps == 2


def test_bad_scaler_settings_are_refused_at_the_step_and_nothing_changes():
    trainer, *_ = fp16_pair("core", {})
    trainer.step(*data(16, SEED, 0))
    before = snapshot(trainer.model, trainer.optimizer)
    scaler_before = trainer.scaler.state_dict()
    for attribute, value, message in [("_growth_factor", 0.5, "growth factor must be"),
                                      ("_backoff_factor", 1.0, "backoff factor must be"),
                                      ("_growth_interval", 0, "growth interval must be")]:
        setattr(trainer.scaler, attribute, value)
        with pytest.raises(RuntimeError, match=message):
            trainer.step(*data(16, SEED, 1))
        setattr(trainer.scaler, attribute, scaler_before[attribute.lstrip("_")])
    trainer.scaler._scale = torch.ones(2)
    with pytest.raises(RuntimeError, match="scale must be a one-element Float tensor"):
        trainer.step(*data(16, SEED, 1))
    assert_unchanged(trainer.model, trainer.optimizer, before)
    assert trainer.steps == 1


def test_input_dtype_is_the_models():
    model = MLP(SEED)
    trainer = torchext.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                               precision="bf16-mixed")
    x, y = data(8, SEED, 0)
    with pytest.raises(RuntimeError, match="input is BFloat16 but the model is Float"):
        trainer.step(x.bfloat16(), y)
    assert trainer.steps == 0


def mixed_data_parallel():
    """On every rank: a mixed precision with a process group, and with a DDP model."""
    import torch.distributed as dist

    model = MLP(SEED)
    messages = []
    for wrap in (False, True):
        net = nn.parallel.DistributedDataParallel(model) if wrap else model
        kwargs = {} if wrap else {"process_group": dist.group.WORLD}
        try:
            torchext.Trainer(net, torch.optim.SGD(model.parameters(), lr=0.1), "mse",
                             precision="bf16-mixed", **kwargs)
        except ValueError as exc:
            messages.append(str(exc))
    return messages


def test_data_parallel_mixed_precision_is_refused_on_every_rank(ranks):  # noqa: F811
    for messages in ranks.run(mixed_data_parallel):
        assert len(messages) == 2
        assert all("does not train data-parallel yet" in m for m in messages)
