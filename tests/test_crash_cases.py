"""The cases that used to crash or hang the process, each run in a subprocess.

A segfault, an abort or a hang then fails one test (with the child's output) instead of taking
the whole test run down. Each child prints ``OK`` as its last line when everything it checks
held; the timeouts only catch hangs and are far above the children's run time.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PRELUDE = """
import threading, torch, torchext
from torchext.nn import MLP
torch.manual_seed(0)
def seed_trainer(dtype=torch.float32):
    model = MLP([20, 30, 30, 40], dtype=dtype)
    opt = torchext.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    return model, torchext.Trainer(model, opt)
x, y = torch.randn(128, 20), torch.randn(128, 40)
"""


def run(code, timeout=300, args=()):
    result = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        f"exit status {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def test_step_and_evaluate_from_two_threads():
    run("""
        model, trainer = seed_trainer()
        big_x, big_y = torch.randn(4096, 20), torch.randn(4096, 40)
        def steps():
            for _ in range(300):
                trainer.step(x, y)
        def evaluations():
            for _ in range(40):
                assert torch.isfinite(torch.tensor(trainer.evaluate(big_x, big_y, 1024)))
        threads = [threading.Thread(target=steps), threading.Thread(target=evaluations)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert trainer.steps == 300
        print("OK")
    """)


def test_a_threaded_stress_mix_on_one_trainer():
    run("""
        import copy, tempfile, os
        model, trainer = seed_trainer(torch.float64)
        ref = copy.deepcopy(model)
        xd, yd = x.double(), y.double()
        folder = tempfile.mkdtemp()
        errors = []
        def guard(fn):
            def run():
                try:
                    fn()
                except Exception as exc:
                    errors.append(exc)
            return run
        def steps():
            for _ in range(100):
                trainer.step(xd, yd)
        def evaluations():
            for b in (7, 64, 300, 1000):
                trainer.evaluate(torch.randn(1000, 20, dtype=torch.float64),
                                 torch.randn(1000, 40, dtype=torch.float64), b)
        def reads():
            for i in range(20):
                state = trainer.state_dict()
                assert state["step"] <= 300
                trainer.save(os.path.join(folder, f"c{i % 2}.pt"))
        threads = [threading.Thread(target=guard(f))
                   for f in (steps, steps, steps, evaluations, reads, evaluations)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not errors, errors
        assert trainer.steps == 300
        ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-2, momentum=0.9)
        for _ in range(300):
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(ref(xd), yd).backward()
            ref_opt.step()
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        reloaded = MLP([20, 30, 30, 40], dtype=torch.float64)
        t2 = torchext.Trainer(reloaded, torchext.optim.SGD(reloaded.parameters(), lr=0.1))
        t2.load(os.path.join(folder, "c1.pt"))  # a checkpoint written mid-run: consistent
        print("OK")
    """, timeout=600)


@pytest.mark.parametrize("call", ["step", "evaluate", "step then evaluate"])
def test_a_parameter_reshaped_after_construction(call):
    run(f"""
        model, trainer = seed_trainer()
        call = {call!r}
        if call == "step then evaluate":
            trainer.step(x, y)
        model[0].weight.data = torch.randn(3000, 20)
        for name in ("step", "evaluate") if call != "evaluate" else ("evaluate",):
            try:
                getattr(trainer, name)(x, y)
                raise SystemExit(f"{{name}} accepted a reshaped parameter")
            except RuntimeError as exc:
                assert "changed since the trainer was built" in str(exc), exc
        print("OK")
    """)


def test_fit_on_nan_data_stops():
    run("""
        model, trainer = seed_trainer()
        xs = torch.randn(4096, 20)
        xs[100, 3] = float("nan")
        before = [p.clone() for p in model.parameters()]
        try:
            trainer.fit(xs, torch.randn(4096, 40), epochs=1000, shuffle=False, progress=False)
        except RuntimeError as exc:
            assert "the loss became nan at epoch 0, step 0" in str(exc), exc
        assert trainer.steps == 0
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        print("OK")
    """)


def test_threads_100000_on_the_command_line_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "torchext", "--threads", "100000"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.count("\n") == 1 and "--threads" in result.stderr


def test_ctrl_c_during_fit_without_a_callback():
    code = PRELUDE + textwrap.dedent("""
        import signal, sys
        # As in an interactive Python, even if this one was started with SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        model, trainer = seed_trainer()
        xs, ys = torch.randn(128 * 64, 20), torch.randn(128 * 64, 40)
        print("ready", flush=True)
        try:
            trainer.fit(xs, ys, epochs=10**6, progress=False)  # hours, uninterrupted
        except KeyboardInterrupt:
            assert len(trainer.optimizer.state) == 6 and trainer.steps > 0
            print("interrupted after", trainer.steps, "steps")
            print("OK")
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        os.kill(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0 and out.strip().endswith("OK"), (child.returncode, out, err)


def test_a_momentum_buffer_resized_inside_fit_is_a_clear_error():
    # fit builds its update once; the update still checks each buffer's shape
    # before writing through it.
    run("""
        model, trainer = seed_trainer()
        trainer.step(x, y)
        buffer = trainer.optimizer.state[model[0].weight]["momentum_buffer"]
        def shrink(*args):
            buffer.resize_(0)
        try:
            trainer.fit(x, y, epochs=2, batch_size=64, progress=shrink)
        except RuntimeError as error:
            assert "momentum_buffers[0] has shape [0]" in str(error), error
        else:
            raise AssertionError("no error")
        print("OK")
    """)


def test_a_parameter_resized_inside_fit_stops_fit_with_a_clear_error():
    # The kernels read parameters by raw pointer: a callback that resizes one in
    # place must stop fit before the next step reads past it.
    run("""
        model, trainer = seed_trainer()
        def shrink(*args):
            model[0].weight.data = torch.zeros(5, 5)
        try:
            trainer.fit(x, y, epochs=2, batch_size=64, progress=shrink)
        except RuntimeError as error:
            assert "parameters changed in place during fit" in str(error), error
            assert "before step 0 of epoch 1" in str(error), error
        else:
            raise AssertionError("no error")
        assert trainer.steps == 2  # epoch 0's two updates, applied and counted
        print("OK")
    """)
