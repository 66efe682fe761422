"""Builds the optional C kernel with cffi; without a compiler ttconv installs and uses jax.numpy."""
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext


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


setup(
    cffi_modules=["ttconv/_build_kernel.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
    # cffi builds the kernel against the stable ABI (_kernel.abi3.so): one wheel serves CPython 3.10+
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
