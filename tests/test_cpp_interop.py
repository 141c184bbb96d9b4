"""The C++ package from Python's side: build, run, and checkpoints across languages.

Builds libtorchext with CMake (with its tests/cpp tools), installs it, builds the
standalone example examples/cpp against the installed package and runs it, and moves a
training run Python → C++ → Python through checkpoints, checking that the loss
trajectory and the final parameters are those of an uninterrupted Python run.

The CMake build goes to $TORCHEXT_CPP_BUILD_DIR or <repo>/build/cpp-interop and is
reused (incremental) across runs: the first build compiles the whole core (several
minutes on 2 cores), later ones only what changed. Skipped when cmake or a C++
compiler is missing, or when the tests do not run from a source checkout.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchext

ROOT = Path(__file__).resolve().parents[1]
TORCH_CMAKE = torch.utils.cmake_prefix_path


def _missing_tools():
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) found"
    if not (ROOT / "CMakeLists.txt").exists() or not (ROOT / "tests/cpp/CMakeLists.txt").exists():
        return "not running from a torchext source checkout (CMakeLists.txt missing)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))


def _run(cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


@pytest.fixture(scope="session")
def cpp_install():
    """(install prefix, build dir) of libtorchext built with -DTORCHEXT_BUILD_TESTS=ON."""
    build = Path(os.environ.get("TORCHEXT_CPP_BUILD_DIR", ROOT / "build" / "cpp-interop"))
    prefix = build / "install"
    jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))
    _run(["cmake", "-S", ROOT, "-B", build / "lib", "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_PREFIX_PATH={TORCH_CMAKE}", f"-DCMAKE_INSTALL_PREFIX={prefix}",
          "-DTORCHEXT_BUILD_TESTS=ON", f"-DPython_EXECUTABLE={sys.executable}"])
    _run(["cmake", "--build", build / "lib", "-j", jobs])
    _run(["cmake", "--install", build / "lib"])
    return prefix, build


def test_example_builds_against_the_installed_package_and_trains(cpp_install, tmp_path):
    prefix, build = cpp_install
    example = build / "example"
    _run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", example, "-DCMAKE_BUILD_TYPE=Release",
          f"-DCMAKE_PREFIX_PATH={prefix};{TORCH_CMAKE}"])
    _run(["cmake", "--build", example, "-j", "2"])
    checkpoint = tmp_path / "mlp.pt"
    out = _run([example / "train_mlp", checkpoint])
    losses = [float(line.split("loss")[1]) for line in out.splitlines() if line.startswith("epoch")]
    assert len(losses) == 6 and losses[-1] < losses[0], out
    state = torch.load(checkpoint)  # weights_only=True
    assert set(state) == {"model", "optimizer", "step", "torchext_version", "checksum"}
    assert state["step"] == 6 * 8
    model = torchext.nn.MLP([20, 30, 30, 40])
    model.load_state_dict(state["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    optimizer.load_state_dict(state["optimizer"])
    assert optimizer.param_groups[0]["momentum"] == 0.9


def _python_run(data, steps):
    """A Python Trainer on the data's network, torch.optim.SGD with every option in use."""
    torch.manual_seed(0)
    model = torchext.nn.MLP(data["sizes"], activation=data["activation"], dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, dampening=0.1,
                                weight_decay=1e-4)
    trainer = torchext.Trainer(model, optimizer, data["loss"])
    losses = [trainer.step(data["x"][s], data["y"][s]).item() for s in range(steps)]
    return trainer, losses


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_checkpoint_python_to_cpp_to_python_continues_exactly(cpp_install, tmp_path, loss):
    _, build = cpp_install
    tool = build / "lib" / "tests" / "cpp" / "torchext_checkpoint_tool"
    sizes, steps = [20, 30, 30, 40], 12
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(steps, 64, 20, dtype=torch.float64, generator=gen)
    y = (torch.randn(steps, 64, 40, dtype=torch.float64, generator=gen) if loss == "mse"
         else torch.randint(40, (steps, 64), generator=gen))
    data = {"sizes": sizes, "activation": "tanh", "loss": loss, "x": x, "y": y}

    reference, expected = _python_run(data, steps)  # uninterrupted, all in Python

    # Python: steps 0-3, checkpoint.
    trainer, losses = _python_run(data, 4)
    trainer.save(tmp_path / "python.pt")
    # C++: steps 4-7 from that checkpoint (its data file holds the remaining batches).
    torch.save({**data, "x": x[4:8], "y": y[4:8]}, tmp_path / "data.pt")
    out = _run([tool, tmp_path / "data.pt", tmp_path / "python.pt", 4, tmp_path / "cpp.pt"])
    losses += [float(v) for v in out.split()]
    # Python again: load the C++ checkpoint (torch.load, weights_only) and finish.
    trainer, _ = _python_run(data, 0)
    trainer.load(tmp_path / "cpp.pt")
    assert trainer.steps == 8
    losses += [trainer.step(x[s], y[s]).item() for s in range(8, steps)]

    assert losses == pytest.approx(expected, rel=1e-10)
    for (name, a), b in zip(trainer.model.named_parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(trainer.optimizer.state[a]["momentum_buffer"],
                                   reference.optimizer.state[b]["momentum_buffer"],
                                   rtol=1e-10, atol=1e-12)


def test_cpp_loads_a_python_state_dict_file(cpp_install, tmp_path):
    """torch.save(model.state_dict()) (an OrderedDict with _metadata) loads in C++."""
    _, build = cpp_install
    tool = build / "lib" / "tests" / "cpp" / "torchext_checkpoint_tool"
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 40)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 0},
               tmp_path / "stock.pt")
    data = {"sizes": [20, 30, 40], "activation": "relu", "loss": "mse",
            "x": torch.zeros(0, 8, 20, dtype=torch.float64),
            "y": torch.zeros(0, 8, 40, dtype=torch.float64)}
    torch.save(data, tmp_path / "data.pt")
    _run([tool, tmp_path / "data.pt", tmp_path / "stock.pt", 0, tmp_path / "back.pt"])
    back = torch.load(tmp_path / "back.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(back["model"][key], value), key
