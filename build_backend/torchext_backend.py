"""PEP 517 backend: setuptools, plus the target environment's own torch.

pip builds in an isolated environment that only holds the packages named in
``[build-system] requires``. torchext must compile against the torch the user
already has (its C++ ABI and CUDA version must match), so every hook first puts
the target interpreter's site-packages on ``sys.path``. torch is never requested
as a build dependency: installing one here would download a different build.

The core is built by CMake (3.21 or newer): the build asks for the ``cmake`` package
only when no such cmake is on PATH, so a machine that has one builds without fetching it.
"""

import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import build_meta as _setuptools


def _expose_target_site_packages():
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        path = paths.get(key)
        if path and path not in sys.path:
            sys.path.append(path)  # after the isolated env, so its setuptools wins


CMAKE_MINIMUM = (3, 21)


def _cmake_on_path_is_recent():
    cmake = shutil.which("cmake")
    if cmake is None:
        return False
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False
    match = re.search(r"version (\d+)\.(\d+)", out)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= CMAKE_MINIMUM


def _with_cmake(requires):
    if _cmake_on_path_is_recent():
        return requires
    return [*requires, "cmake>={}.{}".format(*CMAKE_MINIMUM)]


def _wrap(hook):
    def wrapped(*args, **kwargs):
        _expose_target_site_packages()
        return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    wrapped.__doc__ = hook.__doc__
    return wrapped




def get_requires_for_build_wheel(config_settings=None):
    _expose_target_site_packages()
    return _with_cmake(_setuptools.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings=None):
    _expose_target_site_packages()
    return _with_cmake(_setuptools.get_requires_for_build_editable(config_settings))


get_requires_for_build_sdist = _wrap(_setuptools.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _wrap(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _wrap(_setuptools.prepare_metadata_for_build_editable)
build_wheel = _wrap(_setuptools.build_wheel)
build_sdist = _wrap(_setuptools.build_sdist)
build_editable = _wrap(_setuptools.build_editable)
