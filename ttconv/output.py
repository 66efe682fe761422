"""Atomic output files: written to a temporary file beside the target, fsynced, renamed."""
import contextlib
import errno
import os
import tempfile

from .errors import OutputError

BUFFER_BYTES = 1 << 20


def refuse_same_file(output_path, input_paths):
    """Raise OutputError when output_path is one of the inputs (also via links)."""
    if not os.path.exists(output_path):
        return
    for path in input_paths:
        if os.path.exists(path) and os.path.samefile(output_path, path):
            raise OutputError(f"{output_path}: output is the same file as input {path}; refusing to overwrite it")


def _output_error(target, exc):
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{target}: no space left on device; no output was written")
    return OutputError(f"{target}: cannot write: {exc.strerror or exc}")


class _OutputFile:
    """Buffered writes to a file descriptor; write errors become OutputError naming the target."""

    def __init__(self, fd, target):
        self._fd = fd
        self._target = target
        self._buffer = bytearray()

    def write(self, data):
        view = memoryview(data).cast("B")
        if len(self._buffer) + len(view) <= BUFFER_BYTES:
            self._buffer += view
            return
        self.flush()
        if len(view) <= BUFFER_BYTES:
            self._buffer += view
        else:
            self._write_all(view)

    def flush(self):
        if self._buffer:
            self._write_all(memoryview(self._buffer))
            self._buffer = bytearray()

    def _write_all(self, view):
        try:
            while len(view):
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise _output_error(self._target, exc) from None

    def sync(self):
        self.flush()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _output_error(self._target, exc) from None


@contextlib.contextmanager
def atomic_output(path, inputs=()):
    """Yield a binary file object; on success it replaces path, on any exception it vanishes."""
    path = os.fspath(path)
    refuse_same_file(path, inputs)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; give a file name for the output")
    try:
        os.makedirs(directory, exist_ok=True)
        fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        try:
            out = _OutputFile(fd, path)
            yield out
            out.sync()
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_path, 0o666 & ~umask)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_path)
        raise
