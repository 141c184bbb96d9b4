"""PEP 517 backend: setuptools, plus the target environment's own torch.

pip builds in an isolated environment that only holds the packages named in
``[build-system] requires``. torchext must compile against the torch the user
already has (its C++ ABI and CUDA version must match), so every hook first puts
the target interpreter's site-packages on ``sys.path``. torch is never requested
as a build dependency: installing one here would download a different build.
"""

import sys
import sysconfig

from setuptools import build_meta as _setuptools


def _expose_target_site_packages():
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        path = paths.get(key)
        if path and path not in sys.path:
            sys.path.append(path)  # after the isolated env, so its setuptools wins


def _wrap(hook):
    def wrapped(*args, **kwargs):
        _expose_target_site_packages()
        return hook(*args, **kwargs)

    wrapped.__name__ = hook.__name__
    wrapped.__doc__ = hook.__doc__
    return wrapped


get_requires_for_build_wheel = _wrap(_setuptools.get_requires_for_build_wheel)
get_requires_for_build_sdist = _wrap(_setuptools.get_requires_for_build_sdist)
get_requires_for_build_editable = _wrap(_setuptools.get_requires_for_build_editable)
prepare_metadata_for_build_wheel = _wrap(_setuptools.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _wrap(_setuptools.prepare_metadata_for_build_editable)
build_wheel = _wrap(_setuptools.build_wheel)
build_sdist = _wrap(_setuptools.build_sdist)
build_editable = _wrap(_setuptools.build_editable)
