"""The torchext wheel: libtorchext (built by CMake) and the thin binding torchext._C.

The core (csrc/ops, csrc/train, csrc/api) has one build, CMakeLists.txt: build_ext
configures, builds and installs it into the package folder as

  torchext/lib/libtorchext.so            the core, without Python
  torchext/include/torchext/*.h          its public headers
  torchext/share/cmake/torchext/         its CMake package (torchext.cmake_prefix_path)

and then compiles only csrc/python/*.cpp, the pybind11 binding, with
torch.utils.cpp_extension, linked to that library (found at run time beside it).
Python and C++ programs therefore load the same libtorchext.

Knobs (environment variables):
  USE_CUDA=0            build the CPU-only core even when torch has CUDA
  FORCE_CUDA=1          build CUDA kernels even when no GPU is visible (nvcc required)
  MAX_JOBS=N            parallel compile jobs
  TORCH_CUDA_ARCH_LIST  GPU architectures; defaults to the visible GPUs, else "9.0" (Hopper)
  CMAKE_BUILD_TYPE      the core's CMake build type (default Release)
  CMAKE_ARGS            extra arguments for the CMake configure step
"""

import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def fail(sentence):
    sys.exit(f"error: {sentence}")


try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    fail(
        "torchext builds against an installed PyTorch and none was found; install torch first "
        "(for example `pip install torch`), then run `pip install .` again."
    )


def read_version():
    with open(os.path.join(ROOT, "version.txt")) as f:
        return f.read().strip()


def nvcc_major(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    try:
        out = subprocess.check_output([nvcc, "--version"], text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return int(match.group(1)) if match else None


def want_cuda():
    if os.environ.get("USE_CUDA", "").strip() == "0":
        return False
    force = os.environ.get("FORCE_CUDA", "").strip() == "1"
    if torch.version.cuda is None:
        if force:
            fail(
                f"FORCE_CUDA=1 was set but the installed torch {torch.__version__} is a CPU-only "
                "build; install a CUDA build of torch or unset FORCE_CUDA."
            )
        return False
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None:
        if force:
            fail("FORCE_CUDA=1 was set but nvcc was not found; set CUDA_HOME to the CUDA toolkit.")
        return False
    major = nvcc_major(cuda_home)
    torch_major = int(torch.version.cuda.split(".")[0])
    if major is None:
        if force:
            fail(f"nvcc under CUDA_HOME={cuda_home} could not be run; fix CUDA_HOME or set "
                 "USE_CUDA=0.")
        return False
    if major != torch_major:
        fail(
            f"nvcc is CUDA {major} but torch {torch.__version__} was built with CUDA "
            f"{torch.version.cuda}; point CUDA_HOME at a CUDA {torch_major} toolkit, or set "
            "USE_CUDA=0 for a CPU-only build."
        )
    return True


def cuda_arch_list():
    """TORCH_CUDA_ARCH_LIST, else the visible GPUs' architectures, else Hopper."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        capabilities = {torch.cuda.get_device_capability(i)
                        for i in range(torch.cuda.device_count())}
        return ";".join(f"{major}.{minor}" for major, minor in sorted(capabilities))
    return "9.0"


def cmake_command():
    cmake = shutil.which("cmake")
    if cmake is None:
        fail("cmake (3.21 or newer) was not found on PATH; install it (for example "
             "`pip install cmake`) or use pip's default build isolation, which provides it.")
    return cmake


def cmake_configure_args(install_prefix, in_place):
    """The CMake arguments of the core's build for this torch, CUDA choice and package folder.

    A wheel's libtorchext finds torch relative to its own folder (site-packages/torchext/lib
    -> site-packages/torch/lib); one built in place (editable installs) sits in the source
    tree, so it records the absolute folder of this environment's torch instead.
    """
    args = [
        f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE') or 'Release'}",
        f"-DTorch_DIR={os.path.join(torch.utils.cmake_prefix_path, 'Torch')}",
        f"-DCMAKE_INSTALL_PREFIX={install_prefix}",
        "-DCMAKE_INSTALL_LIBDIR=lib",
        "-DTORCHEXT_WHEEL_LAYOUT=ON",
        f"-DTORCHEXT_RELATIVE_RPATH={'OFF' if in_place else 'ON'}",
        f"-DTORCHEXT_USE_CUDA={'ON' if WITH_CUDA else 'OFF'}",
    ]
    if shutil.which("ninja"):
        args.append("-GNinja")
    if WITH_CUDA:
        cuda_home = cpp_extension.CUDA_HOME
        args += [
            f"-DCMAKE_CUDA_COMPILER={os.path.join(cuda_home, 'bin', 'nvcc')}",
            f"-DCUDAToolkit_ROOT={cuda_home}",
            f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}",  # the FindCUDA that older LibTorch uses
            f"-DTORCH_CUDA_ARCH_LIST={cuda_arch_list()}",
        ]
    return args + shlex.split(os.environ.get("CMAKE_ARGS", ""))


def build_libtorchext(install_prefix, in_place):
    """Configures, builds and installs the core into `install_prefix` (the package folder).

    The CMake build folder is build/libtorchext-<key> in the source tree (not setuptools'
    build_temp, which editable installs make anew each time), named after this torch, CUDA
    choice and interpreter: a rebuild recompiles only what changed, and a build for another
    torch starts afresh.
    """
    cmake = cmake_command()
    key = f"{torch.__version__}|{torch.utils.cmake_prefix_path}|{WITH_CUDA}|{sys.executable}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    build_dir = os.path.join(ROOT, "build", f"libtorchext-{digest}")
    print(f"torchext: building libtorchext with CMake in {build_dir}", flush=True)
    subprocess.check_call([cmake, "-S", ROOT, "-B", build_dir,
                           *cmake_configure_args(install_prefix, in_place)])
    jobs = os.environ.get("MAX_JOBS")
    subprocess.check_call([cmake, "--build", build_dir] + (["-j", jobs] if jobs else []))
    subprocess.check_call([cmake, "--install", build_dir])


class BuildExtWithCore(cpp_extension.BuildExtension):
    """Builds libtorchext into the package folder, then torchext._C linked to it.

    Also writes _build_info.py next to the compiled _C: src/torchext/__init__.py reads
    it before loading the binary, so that a mismatch with the installed torch is reported
    in words. It is written beside the binary (in place for editable installs, into
    build/ otherwise) so that it always describes the binary it sits with.
    """

    def run(self):
        package_dir = os.path.dirname(os.path.abspath(self.get_ext_fullpath("torchext._C")))
        build_libtorchext(package_dir, in_place=self.inplace)
        for ext in self.extensions:
            ext.library_dirs.append(os.path.join(package_dir, "lib"))
        super().run()
        with open(os.path.join(package_dir, "_build_info.py"), "w") as f:
            f.write("# Generated by setup.py: what the _C beside it was built against.\n")
            f.write(f"version = {VERSION!r}\n")
            f.write(f"torch_version = {torch.__version__!r}\n")
            f.write(f"cuda_version = {(torch.version.cuda if WITH_CUDA else None)!r}\n")


def binding():
    """torchext._C: the pybind11 binding only, linked to libtorchext (found beside it)."""
    # The definition the CMake target torchext::torchext gives its consumers.
    defines = ["-DTORCHEXT_WITH_CUDA"] if WITH_CUDA else []
    return cpp_extension.CppExtension(
        name="torchext._C",
        sources=sorted(glob.glob("csrc/python/*.cpp", root_dir=ROOT)),
        include_dirs=[os.path.join(ROOT, "csrc")],
        libraries=["torchext"],
        extra_compile_args={"cxx": ["-O3"] + defines},
        extra_link_args=["-Wl,-rpath,$ORIGIN/lib"],
    )


VERSION = read_version()
WITH_CUDA = want_cuda()

setup(
    version=VERSION,
    ext_modules=[binding()],
    cmdclass={"build_ext": BuildExtWithCore},
)
