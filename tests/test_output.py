"""Atomic output: exact bytes through the pool of buffers, in place or copied, with and without O_DIRECT."""
import errno
import fcntl
import os
import subprocess
import threading
import time

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


def test_the_last_partial_buffer_is_written_direct_too(tmp_path, monkeypatch):
    # A tail left in the page cache makes the file's fsync write it and wait: every write goes
    # around the cache in whole blocks, and the file is cut back to its length.
    real_write = os.write
    writes = []

    def record(fd, data):
        writes.append((len(data), bool(os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL))))
        return real_write(fd, data)

    monkeypatch.setattr(output.os, "write", record)
    data, chunks = pieces(seed=3)
    write(tmp_path / "out", chunks, in_place=False)
    assert (tmp_path / "out").read_bytes() == data
    assert all(direct and size % output.DIRECT_BLOCK == 0 for size, direct in writes), writes
    assert writes[-1][0] == -(-(len(data) % output.BUFFER_BYTES) // output.DIRECT_BLOCK) * output.DIRECT_BLOCK


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


def test_directory_files_are_exact_through_one_shared_pool(tmp_path):
    contents = {f"f{k}": pieces(seed=k, total=output.BUFFER_BYTES // 3 + 1000 * k) for k in range(12)}
    with output.atomic_directory(tmp_path / "dir") as out:
        for name, (_, chunks) in contents.items():
            with out.file(name) as handle:
                for chunk in chunks:
                    handle.write(chunk)
        with out.file("zeros") as handle:
            handle.write(b"header")
            handle.end_with_zeros(3 * output.BUFFER_BYTES)
        out.wait()  # files are finished by a helper thread
        assert out._pool.qsize() == output.POOL_BUFFERS  # every buffer came back to the pool
    assert sorted(os.listdir(tmp_path)) == ["dir"]
    for name, (data, _) in contents.items():
        assert (tmp_path / "dir" / name).read_bytes() == data
    zeros = (tmp_path / "dir" / "zeros").read_bytes()
    assert zeros[:6] == b"header" and len(zeros) == 3 * output.BUFFER_BYTES and not any(zeros[6:])


def test_every_file_of_a_directory_is_fsynced_before_it_is_in_place(tmp_path, monkeypatch):
    """Files finish several at once on helper threads; each one is fsynced, and the directory, before it
    is renamed into place."""
    synced, real_fsync = set(), os.fsync

    def fsync(fd):
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)

    monkeypatch.setattr(output.os, "fsync", fsync)
    with output.atomic_directory(tmp_path / "dir") as out:
        for k in range(3 * output.FINISHING_THREADS):
            with out.file(f"f{k}") as handle:
                handle.write(bytes([k]) * (k * 5000 + 1))
    inodes = {os.stat(tmp_path / "dir" / name).st_ino for name in os.listdir(tmp_path / "dir")}
    assert len(inodes) == 3 * output.FINISHING_THREADS
    assert inodes | {os.stat(tmp_path / "dir").st_ino} <= synced


def test_a_directory_s_files_are_created_and_written_by_a_few_shared_threads(tmp_path, monkeypatch):
    """Not by the thread that fills them; and with fsyncs lagging behind, the finishing threads (which
    wait for the writing) and the writing threads never wait on each other for good."""
    creators, real_open, real_fsync = [], os.open, os.fsync

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            creators.append(threading.current_thread())
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(output.os, "open", open_)
    monkeypatch.setattr(output.os, "fsync", lambda fd: (time.sleep(0.01), real_fsync(fd)))
    count = 3 * (output.WRITING_THREADS + output.FINISHING_THREADS)

    def build():
        with output.atomic_directory(tmp_path / "dir") as out:
            for k in range(count):
                with out.file(f"f{k}") as handle:
                    handle.write(bytes([k]) * (50000 + k))

    builder = threading.Thread(target=build, daemon=True)
    builder.start()
    builder.join(120)
    assert not builder.is_alive(), "the directory never finished"
    assert len(creators) == count and builder not in creators
    assert len({thread.ident for thread in creators}) <= output.WRITING_THREADS
    for k in range(count):
        assert (tmp_path / "dir" / f"f{k}").read_bytes() == bytes([k]) * (50000 + k)


def test_a_file_that_failed_to_finish_stops_the_next_one(tmp_path, monkeypatch):
    """Files are finished (last writes, fsync) by a helper thread; a failure there is raised when the next
    file starts, not only at the end."""
    monkeypatch.setattr(output.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    started = []
    with pytest.raises(OutputError, match="f1: cannot write: I/O error"):
        with output.atomic_directory(tmp_path / "dir") as out:
            with out.file("f1") as handle:
                handle.write(b"data")
            out._pending[0][1].exception()  # let the helper finish f1
            with out.file("f2"):
                started.append("f2")
    assert started == [] and os.listdir(tmp_path) == []


def test_a_failed_fsync_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    real_fsync = os.fsync
    monkeypatch.setattr(output.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OutputError, match="f1: cannot write: I/O error"):
        with output.atomic_directory(tmp_path / "dir") as out:
            for name in ("f1", "f2"):
                with out.file(name) as handle:
                    handle.write(b"data")
    monkeypatch.setattr(output.os, "fsync", real_fsync)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("written", [b"", b"data" * 300000])
def test_a_file_that_cannot_be_created_is_one_error_and_leaves_nothing(tmp_path, written):
    """A file the file system refuses to create is one OutputError naming it; the staging directory goes."""
    name = "n" * 300  # longer than a file name may be
    with pytest.raises(OutputError, match=f"{name}: cannot write: File name too long"):
        with output.atomic_directory(tmp_path / "dir") as out:
            with out.file("first") as handle:
                handle.write(b"kept until the end")
            with out.file(name) as handle:
                handle.write(written)
                handle.write(written)
            out.wait()
    assert os.listdir(tmp_path) == []
