"""The build and the import fail in words, not tracebacks, when the environment is wrong.

setup.py is run in a subprocess with a doctored environment; the package is
imported from a copy whose build record names another torch.
"""

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
    fake_toolkit = tmp_path / "cuda"
    (fake_toolkit / "bin").mkdir(parents=True)
    nvcc = fake_toolkit / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 11.8, V11.8.89'\n")
    nvcc.chmod(0o755)
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


def test_build_info_describes_this_binary():
    info = torchext.build_info()
    assert info["version"] == torchext.__version__
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert info["cuda"] == (info["cuda_version"] is not None)
