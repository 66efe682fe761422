"""Builds the optional C kernel with cffi; without a compiler ttconv installs and uses jax.numpy."""
import compileall
import os
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ttconv")


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the C kernel cannot be compiled."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # any compiler or toolchain failure
            self._fallback_warning(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # any compiler or toolchain failure
            self._fallback_warning(exc)

    @staticmethod
    def _fallback_warning(exc):
        warnings.warn(
            f"ttconv: the C kernel could not be built ({exc}); ttconv will run on the "
            "slower jax.numpy fallback (see `python -m ttconv --version`)",
            stacklevel=1,
        )


class BuildPyWithBytecode(build_py):
    """build_py that, for an editable install, compiles the package's modules in place.

    pip byte-compiles what a regular install copies; an editable install runs the source tree,
    where nothing writes bytecode when PYTHONDONTWRITEBYTECODE is set, and every command would
    compile each module it imports again (about 0.1 s of a small conversion). Python checks a
    .pyc against its source, so an edited module is still compiled afresh."""

    def run(self):
        super().run()
        if self.editable_mode:
            compileall.compile_dir(PACKAGE_DIR, quiet=1)


setup(
    cffi_modules=["ttconv/_build_kernel.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithBytecode},
    # cffi builds the kernel against the stable ABI (_kernel.abi3.so): one wheel serves CPython 3.10+
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
