"""The build follows its knobs, and the build and the import fail in words, not tracebacks,
when the environment is wrong.

setup.py is run in a subprocess with a doctored environment (its setup() call replaced when
only its CMake arguments are inspected); the package is imported from copies whose build
record names another torch, or whose core library is missing.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchext

SETUP_PY = Path(__file__).resolve().parents[1] / "setup.py"
BACKEND_PY = SETUP_PY.parent / "build_backend" / "torchext_backend.py"
needs_source_tree = pytest.mark.skipif(not SETUP_PY.exists(), reason="needs the source tree")


def run_setup(prelude, env_overrides, tmp_path):
    """Runs setup.py --version after `prelude`; returns (exit code, combined output)."""
    script = textwrap.dedent(prelude) + (
        "\nimport runpy, sys\nsys.argv = ['setup.py', '--version']\n"
        f"runpy.run_path({str(SETUP_PY)!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, **env_overrides)
    proc = subprocess.run([sys.executable, "-c", script], cwd=SETUP_PY.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def _fake_cuda_toolkit(tmp_path, release="13.0"):
    toolkit = tmp_path / "cuda"
    (toolkit / "bin").mkdir(parents=True)
    nvcc = toolkit / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    return toolkit


@needs_source_tree
def test_build_without_torch_says_what_to_do(tmp_path):
    code, out = run_setup("import sys\nsys.modules['torch'] = None", {}, tmp_path)
    assert code != 0
    assert "error: torchext builds against an installed PyTorch and none was found; install " \
           "torch first" in out
    assert "Traceback" not in out


@needs_source_tree
def test_force_cuda_with_cpu_torch_says_what_to_do(tmp_path):
    code, out = run_setup("import torch\ntorch.version.cuda = None", {"FORCE_CUDA": "1"}, tmp_path)
    assert code != 0
    assert "FORCE_CUDA=1 was set but the installed torch" in out and "CPU-only build" in out
    assert "Traceback" not in out


@needs_source_tree
def test_nvcc_major_mismatch_says_what_to_do(tmp_path):
    fake_toolkit = _fake_cuda_toolkit(tmp_path, release="11.8")
    # Pretend to be a CUDA 13 torch whose toolkit lookup found the fake nvcc.
    prelude = f"""
        import torch
        from torch.utils import cpp_extension
        torch.version.cuda = '13.0'
        cpp_extension.CUDA_HOME = {str(fake_toolkit)!r}
    """
    code, out = run_setup(prelude, {"USE_CUDA": ""}, tmp_path)
    assert code != 0
    assert "nvcc is CUDA 11 but torch" in out and "built with CUDA 13.0" in out
    assert "USE_CUDA=0" in out and "Traceback" not in out


@needs_source_tree
def test_use_cuda_0_skips_the_cuda_checks(tmp_path):
    code, out = run_setup("import torch\ntorch.version.cuda = '13.0'",
                          {"CUDA_HOME": str(tmp_path / "missing"), "USE_CUDA": "0"}, tmp_path)
    assert code == 0, out
    assert (SETUP_PY.parent / "version.txt").read_text().strip() in out


def cmake_args(prelude, env_overrides, in_place=False):
    """setup.py's CMake configure arguments, with setup() itself replaced by a no-op."""
    script = textwrap.dedent(prelude) + (
        "\nimport json, runpy, setuptools\nsetuptools.setup = lambda **kwargs: None\n"
        f"ns = runpy.run_path({str(SETUP_PY)!r})\n"
        f"print(json.dumps(ns['cmake_configure_args']('/prefix', {in_place!r})))\n"
    )
    env = dict(os.environ, **env_overrides)
    proc = subprocess.run([sys.executable, "-c", script], cwd=SETUP_PY.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@needs_source_tree
@pytest.mark.parametrize("in_place", [False, True])
def test_cmake_arguments_of_a_cpu_build(in_place):
    env = {"USE_CUDA": "0", "CMAKE_BUILD_TYPE": "", "CMAKE_ARGS": "-DFOO=1 '-DBAR=a b'"}
    args = cmake_args("", env, in_place)
    assert "-DCMAKE_BUILD_TYPE=Release" in args  # optimised by default
    assert "-DTORCHEXT_USE_CUDA=OFF" in args and "-DTORCHEXT_WHEEL_LAYOUT=ON" in args
    assert "-DCMAKE_INSTALL_PREFIX=/prefix" in args
    # A wheel's library finds torch relative to itself; an in-place build at its absolute path.
    assert f"-DTORCHEXT_RELATIVE_RPATH={'OFF' if in_place else 'ON'}" in args
    assert f"-DTorch_DIR={os.path.join(torch.utils.cmake_prefix_path, 'Torch')}" in args
    assert args[-2:] == ["-DFOO=1", "-DBAR=a b"]  # CMAKE_ARGS last, so they win
    assert "-DCMAKE_BUILD_TYPE=Debug" in cmake_args("", {**env, "CMAKE_BUILD_TYPE": "Debug"})


@needs_source_tree
@pytest.mark.parametrize("arch_list", ["8.0;9.0", ""])
def test_cmake_arguments_of_a_forced_cuda_build(tmp_path, arch_list):
    toolkit = _fake_cuda_toolkit(tmp_path)
    prelude = f"""
        import torch
        from torch.utils import cpp_extension
        torch.version.cuda = '13.0'
        torch.cuda.is_available = lambda: False
        cpp_extension.CUDA_HOME = {str(toolkit)!r}
    """
    args = cmake_args(prelude, {"USE_CUDA": "", "FORCE_CUDA": "1",
                                "TORCH_CUDA_ARCH_LIST": arch_list, "CMAKE_ARGS": ""})
    assert "-DTORCHEXT_USE_CUDA=ON" in args
    assert f"-DCMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}" in args
    assert f"-DCUDAToolkit_ROOT={toolkit}" in args
    # No GPU visible and no TORCH_CUDA_ARCH_LIST: Hopper.
    assert f"-DTORCH_CUDA_ARCH_LIST={arch_list or '9.0'}" in args


@needs_source_tree
def test_build_without_cmake_says_what_to_do(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), USE_CUDA="0")  # no cmake on PATH
    proc = subprocess.run([sys.executable, str(SETUP_PY), "build_ext", "--build-lib",
                           str(tmp_path / "lib"), "--build-temp", str(tmp_path / "temp")],
                          cwd=SETUP_PY.parent, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert "error: cmake (3.21 or newer) was not found on PATH" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_source_tree
def test_build_backend_asks_for_cmake_only_without_a_recent_one(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("torchext_backend_under_test", BACKEND_PY)
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert backend._with_cmake(["wheel"]) == ["wheel", "cmake>=3.21"]
    old_cmake = tmp_path / "cmake"
    old_cmake.write_text("#!/bin/sh\necho 'cmake version 3.16.3'\n")
    old_cmake.chmod(0o755)
    assert backend._with_cmake(["wheel"]) == ["wheel", "cmake>=3.21"]
    old_cmake.write_text("#!/bin/sh\necho 'cmake version 3.31.6'\n")
    assert backend._with_cmake(["wheel"]) == ["wheel"]


def test_binary_built_for_another_torch_fails_in_words(tmp_path):
    package = Path(torchext.__file__).parent
    copy = tmp_path / "torchext"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    info = (copy / "_build_info.py").read_text()
    (copy / "_build_info.py").write_text(
        info.replace(f"torch_version = {torchext._build_info.torch_version!r}",
                     "torch_version = '1.13.0'"))
    proc = subprocess.run([sys.executable, "-c", "import torchext"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"was built against torch 1.13.0, but torch {torch.__version__} is installed" \
        in proc.stderr
    assert "Rebuild torchext against the installed torch" in proc.stderr


def test_missing_core_library_fails_in_words(tmp_path):
    package = Path(torchext.__file__).parent
    copy = tmp_path / "torchext"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "lib" / "libtorchext.so").unlink()
    proc = subprocess.run([sys.executable, "-c", "import torchext"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "torchext's compiled core failed to load (libtorchext.so: cannot open" in proc.stderr
    assert "Rebuild torchext against the installed torch" in proc.stderr


def test_the_package_is_a_cpp_distribution():
    package = Path(torchext.__file__).parent
    assert (package / "lib" / "libtorchext.so").is_file()
    assert (package / "include" / "torchext" / "torchext.h").is_file()
    config = Path(torchext.cmake_prefix_path) / "torchext" / "torchextConfig.cmake"
    assert config.is_file() and Path(torchext.cmake_prefix_path) == package / "share" / "cmake"


def test_build_info_describes_this_binary():
    info = torchext.build_info()
    assert info["version"] == torchext.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cuda"] == (info["cuda_version"] is not None)
