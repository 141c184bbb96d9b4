"""The C++ distribution inside the installed torchext, from Python's side.

C++ programs are built against the installed package alone (torchext.cmake_prefix_path
next to torch.utils.cmake_prefix_path), never by compiling libtorchext again: tests/cpp
(the C++ API tests, a checkpoint tool, an operator plugin) and examples/cpp are one
CMake project, configured once per session and built incrementally in
$TORCHEXT_CPP_BUILD_DIR (default <repo>/build/cpp-tests). The tests then check that

- those programs load the very libtorchext that Python loads, and the C++ API tests pass;
- the README's C++ consumer (its CMakeLists.txt, main.cpp and commands, as shown) builds
  against the pip install and runs;
- a C++ library loaded into Python with torch.ops.load_library next to torchext._C shares
  the one libtorchext, so the torchext operators are registered once, and both work;
- TorchScript models saved in Python run in C++ (torch::jit::load) with Python's numbers;
- training moves Python -> C++ -> Python through checkpoints with an uninterrupted run's
  numbers, and the example trains and writes a checkpoint Python reads.

Skipped, with the reason, when cmake or a C++ compiler is missing, when the installed
torchext carries no CMake package, or outside a source checkout.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import torchext

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LIBTORCHEXT = Path(torchext.__file__).resolve().parent / "lib" / "libtorchext.so"
PREFIX_PATH = f"{torch.utils.cmake_prefix_path};{torchext.cmake_prefix_path}"


def _missing_tools():
    if shutil.which("cmake") is None:
        return "cmake is not installed"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) found"
    if not (Path(torchext.cmake_prefix_path) / "torchext" / "torchextConfig.cmake").exists():
        return f"the installed torchext has no CMake package under {torchext.cmake_prefix_path}"
    if not (ROOT / "tests" / "cpp" / "CMakeLists.txt").exists():
        return "not running from a torchext source checkout (tests/cpp missing)"
    return None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=str(_missing_tools()))


def _run(cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout


def _cuda_hints():
    """CMake hints for a CUDA torch: its CMake config needs the toolkit (as setup.py's build)."""
    cuda_home = os.environ.get("CUDA_HOME")
    if torch.version.cuda is None or not cuda_home:
        return []
    return [f"-DCUDAToolkit_ROOT={cuda_home}",
            f"-DCMAKE_CUDA_COMPILER={os.path.join(cuda_home, 'bin', 'nvcc')}"]


def _jobs():
    return os.environ.get("MAX_JOBS", str(os.cpu_count() or 2))


@pytest.fixture(scope="session")
def cpp_build():
    """The build folder of tests/cpp (with examples/cpp) against the installed torchext."""
    build = Path(os.environ.get("TORCHEXT_CPP_BUILD_DIR", ROOT / "build" / "cpp-tests"))
    # The packages' folders are given explicitly, so that a build folder configured earlier
    # against another installation (whose paths CMake caches) follows this one.
    _run(["cmake", "-S", ROOT / "tests" / "cpp", "-B", build,
          f"-DCMAKE_PREFIX_PATH={PREFIX_PATH}",
          f"-DTorch_DIR={Path(torch.utils.cmake_prefix_path) / 'Torch'}",
          f"-Dtorchext_DIR={Path(torchext.cmake_prefix_path) / 'torchext'}", *_cuda_hints()])
    _run(["cmake", "--build", build, "-j", _jobs()])
    return build


def _linked_libtorchext(binary):
    """The libtorchext file the dynamic loader picks for `binary`."""
    out = _run(["ldd", binary])
    match = re.search(r"libtorchext\.so\S* => (\S+)", out)
    assert match, f"{binary} does not link libtorchext:\n{out}"
    return Path(match.group(1)).resolve()


def test_cpp_api_tests_pass_on_the_installed_libtorchext(cpp_build):
    binary = cpp_build / "torchext_api_test"
    assert _linked_libtorchext(binary) == LIBTORCHEXT
    out = _run(["ctest", "--output-on-failure"], cwd=cpp_build)
    assert "100% tests passed" in out, out


# ---------------------------------------------------------------------------- the README


def _readme_block(marker):
    """The fenced block right after `<!-- ci: MARKER -->` in the README."""
    match = re.search(rf"<!-- ci: {re.escape(marker)} -->\s*```[a-z]*\n(.*?)\n```",
                      README.read_text(encoding="utf-8"), re.S)
    assert match, f"README.md has no block marked <!-- ci: {marker} -->"
    return match.group(1) + "\n"


def test_readme_cpp_consumer_builds_against_the_pip_install_and_runs(tmp_path):
    (tmp_path / "CMakeLists.txt").write_text(_readme_block("cpp consumer CMakeLists.txt"))
    (tmp_path / "main.cpp").write_text(_readme_block("cpp consumer main.cpp"))
    commands = _readme_block("cpp consumer commands")
    # The README's commands as shown, with this interpreter as `python` and CUDA hints added
    # to the configure line where this torch needs them.
    bin_dir = tmp_path / "python-bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               CMAKE_BUILD_PARALLEL_LEVEL=_jobs())
    if _cuda_hints():
        env["CMAKE_ARGS"] = " ".join(_cuda_hints())
        commands = commands.replace("cmake -S . -B build", "cmake -S . -B build $CMAKE_ARGS", 1)
    out = _run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env)
    assert _linked_libtorchext(tmp_path / "build" / "app") == LIBTORCHEXT
    losses = [float(v) for v in re.findall(r"step \d+ loss (\S+)", out)]
    assert len(losses) == 10 and losses[-1] < losses[0], out
    assert (tmp_path / "checkpoint.pt").exists()
    state = torch.load(tmp_path / "checkpoint.pt")  # weights_only=True
    assert state["step"] == 10


def test_find_package_refuses_a_torch_of_another_version(tmp_path):
    """A LibTorch whose version differs from the build's is refused at configure time, in words."""
    fake_torch = tmp_path / "other-torch" / "Torch"
    fake_torch.mkdir(parents=True)
    (fake_torch / "TorchConfig.cmake").write_text("set(Torch_FOUND TRUE)\n")
    (fake_torch / "TorchConfigVersion.cmake").write_text(
        'set(PACKAGE_VERSION "1.13.1")\nset(PACKAGE_VERSION_COMPATIBLE TRUE)\n')
    (tmp_path / "CMakeLists.txt").write_text(_readme_block("cpp consumer CMakeLists.txt"))
    (tmp_path / "main.cpp").write_text(_readme_block("cpp consumer main.cpp"))
    result = subprocess.run(
        ["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "build"),
         f"-DCMAKE_PREFIX_PATH={tmp_path / 'other-torch'};{torchext.cmake_prefix_path}"],
        capture_output=True, text=True)
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert (f"was built against torch {torch.__version__.split('+')[0]}, but CMAKE_PREFIX_PATH "
            "finds Torch 1.13.1") in message, result.stderr


# ---------------------------------------------------------------------------- one registration

PLUGIN_CHECK = textwrap.dedent("""
    import json, sys
    import torch
    import torch.nn.functional as F

    plugin, order = sys.argv[1], sys.argv[2]
    if order == "plugin first":
        torch.ops.load_library(plugin)
        import torchext
    else:
        import torchext
        torch.ops.load_library(plugin)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=gen, requires_grad=True)
    w = torch.randn(3, 5, generator=gen, requires_grad=True)
    b = torch.randn(3, generator=gen, requires_grad=True)
    got = torch.ops.torchext_test_plugin.linear_relu(x, w, b)
    got_grads = torch.autograd.grad(got.square().sum(), (x, w, b))
    ref = torch.relu(F.linear(x, w, b))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w, b))
    torch.testing.assert_close(got, ref)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r)
    torch.testing.assert_close(torch.ops.torchext.linear(x, w, b), F.linear(x, w, b))
    mapped = sorted({line.split()[-1] for line in open("/proc/self/maps")
                     if line.rstrip().endswith("libtorchext.so")})
    print(json.dumps(mapped))
""")


@pytest.mark.parametrize("order", ["torchext first", "plugin first"])
def test_a_cpp_library_loaded_next_to_the_binding_shares_one_libtorchext(cpp_build, order):
    plugin = cpp_build / "libtorchext_test_plugin.so"
    assert _linked_libtorchext(plugin) == LIBTORCHEXT
    out = _run([sys.executable, "-c", PLUGIN_CHECK, plugin, order], cwd=cpp_build)
    mapped = json.loads(out.splitlines()[-1])
    assert [Path(p).resolve() for p in mapped] == [LIBTORCHEXT], out


# ---------------------------------------------------------------------------- TorchScript


class OpsMLP(nn.Module):
    """A scriptable two-layer network calling torch.ops.torchext.linear directly."""

    def __init__(self, dtype):
        super().__init__()
        self.hidden = nn.Linear(20, 30, dtype=dtype)
        self.out = nn.Linear(30, 40, bias=False, dtype=dtype)

    def forward(self, x):
        h = torch.tanh(torch.ops.torchext.linear(x, self.hidden.weight, self.hidden.bias))
        return torch.ops.torchext.linear(h, self.out.weight, None)

    def stock(self, x):
        return self.out(torch.tanh(self.hidden(x)))


def _run_scripted(cpp_build, tmp_path, scripted, x):
    scripted.save(str(tmp_path / "model.pt"))
    torch.save(x, tmp_path / "input.pt")
    _run([cpp_build / "examples" / "run_scripted", tmp_path / "model.pt", tmp_path / "input.pt",
          tmp_path / "output.pt"])
    return torch.load(tmp_path / "output.pt")


def _assert_cpp_and_python_agree(cpp, python, stock, exact):
    """The C++ program's output, Python's run of the same scripted model and stock torch's
    agree within the parity tolerance, each measured against `exact` (stock torch in float64),
    so that a failure names the run that is off rather than only the distance between two."""
    tol = {torch.float32: 1e-5, torch.float64: 1e-10}[cpp.dtype]
    errors = {name: (out.double() - exact).abs().max().item()
              for name, out in (("C++", cpp), ("Python", python), ("stock", stock))}
    for out in (cpp, python, stock):
        torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol,
                                   msg=lambda m: f"{m}\nlargest errors against float64: {errors}")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("shape", [(128, 20), (4, 16, 20), (20,)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_scripted_torchext_ops_run_in_cpp_with_pythons_numbers(cpp_build, tmp_path, dtype, shape):
    torch.manual_seed(0)
    model = OpsMLP(dtype)
    scripted = torch.jit.script(model)
    assert "torchext::linear" in str(scripted.graph)
    x = torch.randn(shape, dtype=dtype)
    got = _run_scripted(cpp_build, tmp_path, scripted, x)
    with torch.no_grad():
        _assert_cpp_and_python_agree(got, scripted(x), model.stock(x),
                                     copy.deepcopy(model).double().stock(x.double()))


def _stock_twin(module):
    """The same network from stock torch.nn.Linear layers, with the same parameters."""
    def stock(m):
        return nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                         dtype=m.weight.dtype)

    twin = (stock(module) if isinstance(module, nn.Linear)
            else nn.Sequential(*[stock(m) if isinstance(m, nn.Linear) else m for m in module]))
    twin.load_state_dict(module.state_dict())
    return twin


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("make, dtype, shape", [
    (lambda dtype: torchext.nn.MLP([20, 30, 30, 40], activation="relu", dtype=dtype),
     torch.float32, (128, 20)),
    (lambda dtype: torchext.nn.MLP([20, 30, 40], activation="tanh", dtype=dtype),
     torch.float64, (4, 16, 20)),
    (lambda dtype: torchext.nn.Linear(20, 40, bias=False, dtype=dtype), torch.float32, (20,)),
], ids=["MLP-relu-float32", "MLP-tanh-float64", "Linear-nobias-float32-1d"])
def test_scripted_torchext_nn_runs_in_cpp_with_pythons_numbers(cpp_build, tmp_path, make, dtype,
                                                               shape):
    torch.manual_seed(0)
    model = make(dtype)
    scripted = torch.jit.script(model)
    assert "torchext::linear" in str(scripted.inlined_graph)  # the C++ program must resolve it
    x = torch.randn(shape, dtype=dtype)
    got = _run_scripted(cpp_build, tmp_path, scripted, x)
    with torch.no_grad():
        stock = _stock_twin(model)
        _assert_cpp_and_python_agree(got, scripted(x), stock(x),
                                     copy.deepcopy(stock).double()(x.double()))


# ---------------------------------------------------------------------------- checkpoints


def test_example_trains_and_writes_a_checkpoint_python_reads(cpp_build, tmp_path):
    checkpoint = tmp_path / "mlp.pt"
    out = _run([cpp_build / "examples" / "train_mlp", checkpoint])
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
def test_checkpoint_python_to_cpp_to_python_continues_exactly(cpp_build, tmp_path, loss):
    tool = cpp_build / "torchext_checkpoint_tool"
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


def test_cpp_loads_a_python_state_dict_file(cpp_build, tmp_path):
    """torch.save(model.state_dict()) (an OrderedDict with _metadata) loads in C++."""
    tool = cpp_build / "torchext_checkpoint_tool"
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
