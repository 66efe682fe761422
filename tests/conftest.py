import os
import shutil

import pytest

from ttconv import kernels
from ttconv.cli import main

import support

C_LOADED = kernels._kernel is not None


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
