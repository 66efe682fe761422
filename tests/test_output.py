"""Atomic output: exact bytes through the pool of buffers, in place or copied, with and without O_DIRECT."""
import errno
import fcntl
import os
import subprocess

import numpy as np
import pytest

from ttconv import output
from ttconv.errors import OutputError


def pieces(seed=0, total=3 * output.BUFFER_BYTES + 12345):
    """Random bytes cut into uneven pieces, some larger than a buffer."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, total, dtype=np.uint8).tobytes()
    cuts = np.sort(rng.integers(0, total, 40))
    cuts[5] = cuts[4] + output.BUFFER_BYTES + 7
    cuts = np.unique(np.clip(cuts, 0, total))
    return data, [data[a:b] for a, b in zip([0, *cuts], [*cuts, total])]


def write(path, chunks, in_place):
    with output.atomic_output(path) as out:
        for chunk in chunks:
            room = out.reserve(len(chunk)) if in_place else None
            if room is None:
                out.write(chunk)
            else:
                room[:] = np.frombuffer(chunk, dtype=np.uint8)
                out.commit(len(chunk))


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("direct", [True, False])
def test_bytes_are_exact(tmp_path, monkeypatch, in_place, direct):
    if not direct:
        monkeypatch.setattr(output, "_direct_io", lambda fd: False)
    data, chunks = pieces()
    write(tmp_path / "out", chunks, in_place)
    assert (tmp_path / "out").read_bytes() == data
    assert os.listdir(tmp_path) == ["out"]


def test_direct_io_is_used_on_this_file_system(tmp_path):
    fd = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
    try:
        assert output._direct_io(fd) == hasattr(os, "O_DIRECT")
    finally:
        os.close(fd)


def test_a_file_system_refusing_direct_writes_gets_buffered_ones(tmp_path, monkeypatch):
    real_write = os.write
    refused = []

    def refuse_direct(fd, data):
        if os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL):
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", refuse_direct)
    data, chunks = pieces(seed=1)
    write(tmp_path / "out", chunks, in_place=True)
    assert refused and (tmp_path / "out").read_bytes() == data


def test_full_file_system_is_one_error_and_leaves_nothing(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        (mount / "out").write_bytes(b"previous")
        data, chunks = pieces(seed=2, total=2 * output.BUFFER_BYTES)
        with pytest.raises(OutputError, match="no space left on device"):
            write(mount / "out", chunks, in_place=True)
        assert os.listdir(mount) == ["out"] and (mount / "out").read_bytes() == b"previous"
    finally:
        subprocess.run(["umount", str(mount)], check=True)
