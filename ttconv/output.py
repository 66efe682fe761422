"""Atomic output files and directories: written to a temporary sibling of the target, fsynced, renamed."""
import concurrent.futures
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import queue
import shutil
import tempfile
import threading

import numpy as np

from . import interrupts
from .errors import OutputError

BUFFER_BYTES = 1 << 22
POOL_BUFFERS = 8
DIRECT_BLOCK = 4096  # what O_DIRECT writes are padded to: a multiple of any logical block size
FINISHING_THREADS = 4  # a directory's files fsynced at once, which the file system commits together
WRITING_THREADS = 8  # threads that create and write a directory's files, shared by them (one a file cost its start)


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


def _direct_io(fd):
    """Switch fd to O_DIRECT where the file system allows it; True when it did.

    Writing a multi-GB output around the page cache is about twice as fast here and leaves
    the inputs' cached pages alone; file systems without it (tmpfs) keep buffered writes."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | direct)
    except OSError:
        return False
    return True


def _buffered_io(fd):
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~getattr(os, "O_DIRECT", 0))


def buffer_pool():
    """The buffers an output file writes through: page-aligned (as O_DIRECT needs). Files written one
    after another share one pool, so that its memory is faulted in once."""
    pool = queue.Queue()
    for _ in range(POOL_BUFFERS):
        pool.put(mmap.mmap(-1, BUFFER_BYTES))
    return pool


class _OutputFile:
    """Writes through a background thread so that reading and encoding overlap the disk.

    Data is copied (or encoded in place, see reserve) into a small pool of page-aligned
    buffers (bounded memory) that the thread writes in order, whole, with O_DIRECT where
    the file system allows it (the last, partial buffer padded, the file then cut back to
    its length). A write error (e.g. a full disk) surfaces as OutputError on the next call."""

    def __init__(self, fd, target, pool=None, writers=None):
        """fd: the open file, or a function that opens it and returns its descriptor, called by the
        writing thread (a directory's files are created there, off the converting thread); writers: an
        executor that does the writing (a directory's files share a few threads), else a thread of
        the file's own."""
        self._fd, self._open = (None, fd) if callable(fd) else (fd, None)
        self._target = target
        self._direct = False if self._open else _direct_io(fd)
        self._free = pool if pool is not None else buffer_pool()
        self._full = queue.Queue()
        self._current = None
        self._fill = 0
        self._length = 0  # bytes the writer thread has written
        self._error = None
        self._ended = False
        if writers is None:
            thread = threading.Thread(target=self._drain, name="ttconv-writer", daemon=True)
            thread.start()
            self._drained = thread.join
        else:
            self._drained = writers.submit(self._drain).result

    @property
    def fd(self):
        """The file's descriptor (None until the writing thread opened it, or when it could not)."""
        return self._fd

    def write(self, data):
        interrupts.check()
        view = memoryview(data).cast("B")
        while len(view):
            self._raise_error()
            if self._current is None:
                self._current, self._fill = self._free.get(), 0
            n = min(len(view), BUFFER_BYTES - self._fill)
            self._current[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == BUFFER_BYTES:
                self._hand_over()

    def reserve(self, nbytes):
        """Room for nbytes in the current pool buffer, as a writable uint8 array to encode into in place
        (saving a copy), or None when the buffer has less room left: buffers are only ever handed to
        the writer thread full. commit(nbytes) adds what was encoded."""
        interrupts.check()
        self._raise_error()
        if self._current is None:
            self._current, self._fill = self._free.get(), 0
        if BUFFER_BYTES - self._fill < nbytes:
            return None
        return np.frombuffer(self._current, dtype=np.uint8, count=nbytes, offset=self._fill)

    def room(self):
        """How many bytes reserve() can lend now (a whole buffer when none is being filled)."""
        return BUFFER_BYTES - self._fill if self._current is not None else BUFFER_BYTES

    def commit(self, nbytes):
        """Add the nbytes just encoded into the array that reserve() gave."""
        self._fill += nbytes
        if self._fill == BUFFER_BYTES:
            self._hand_over()

    def _hand_over(self):
        self._full.put((self._current, self._fill))
        self._current = None

    def _drain(self):
        if self._open is not None:
            try:
                self._fd = self._open()
                self._direct = _direct_io(self._fd)
            except OSError as exc:
                self._error = exc
        while True:
            item = self._full.get()
            if item is None:
                return
            buffer, size = item
            if self._error is None:
                try:
                    if self._direct and size < BUFFER_BYTES:  # the last buffer
                        self._write_last_direct(buffer, size)
                    else:
                        self._write_all(memoryview(buffer)[:size])
                        self._length += size
                except OSError as exc:
                    self._error = exc
            self._free.put(buffer)

    def _write_last_direct(self, buffer, size):
        """The last, partial buffer with O_DIRECT too: padded to whole blocks, then the file cut back
        to its length. Written through the page cache instead, it would leave a dirty page that the
        file's fsync then writes and waits for: for a directory of hundreds of files, about a third
        of the time (311 files of Qwen3-0.6B written and fsynced: 1.74 s -> 1.31 s)."""
        self._write_all(memoryview(buffer)[:-(-size // DIRECT_BLOCK) * DIRECT_BLOCK])
        self._length += size
        os.ftruncate(self._fd, self._length)

    def _stop_direct_io(self):
        _buffered_io(self._fd)
        self._direct = False

    def _write_all(self, view):
        while len(view):
            try:
                view = view[os.write(self._fd, view):]
            except OSError as exc:
                if not (self._direct and exc.errno == errno.EINVAL):
                    raise
                self._stop_direct_io()  # the file system took the flag but refuses the write
                continue
            if len(view) and self._direct:
                self._stop_direct_io()  # a short write leaves the file offset unaligned

    def _raise_error(self):
        if self._error is not None:
            raise _output_error(self._target, self._error)

    def end(self):
        """Hand what is buffered to the writing thread, and the end of the file (nothing may be
        written after); close() waits for it."""
        if self._ended:
            return
        self._ended = True
        if self._current is not None and self._fill:
            self._hand_over()
        elif self._current is not None:  # an empty buffer goes back to the (possibly shared) pool
            self._free.put(self._current)
            self._current = None
        self._full.put(None)

    def close(self):
        """Write what is buffered and wait until the writing is done (also after an error)."""
        self.end()
        self._drained()

    def release(self):
        """Close the descriptor that the writing thread opened (after close())."""
        if self._open is not None and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def end_with_zeros(self, size):
        """Write what is buffered, then extend the file with zeros to size bytes without writing them
        (a hole: the file system reads it as zeros). Nothing may be written after."""
        self.close()
        self._raise_error()
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise _output_error(self._target, exc) from None

    def sync(self):
        self.close()
        self._raise_error()
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise _output_error(self._target, exc) from None


def _umask():
    """The process's umask (reading it means setting it: it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_file_target(path, inputs=()):
    """Raise OutputError when path cannot take an output file: it is an input or a directory."""
    refuse_same_file(path, inputs)
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; give a file name for the output")


@contextlib.contextmanager
def atomic_output(path, inputs=()):
    """Yield a binary file object; on success it replaces path, on any exception it vanishes.

    SIGINT and SIGTERM wait while the temporary file is created and while it is renamed,
    so that a signal at any instant either leaves no file at all or finds the output complete."""
    path = os.fspath(path)
    check_file_target(path, inputs)
    directory = os.path.dirname(os.path.abspath(path))
    temp_path = None
    try:
        with interrupts.held():
            try:
                os.makedirs(directory, exist_ok=True)
                fd, temp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial",
                                                 dir=directory)
            except OSError as exc:
                raise _output_error(path, exc) from None
        out = _OutputFile(fd, path)
        try:
            yield out
            out.sync()
        finally:
            out.close()
            os.close(fd)
        os.chmod(temp_path, 0o666 & ~_umask())
        with interrupts.held():
            os.replace(temp_path, path)
            temp_path = None
    except BaseException:
        if temp_path is not None:
            with interrupts.held(), contextlib.suppress(OSError):
                os.unlink(temp_path)
        raise


METADATA_NAME = "metadata.flatbuffer"
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def _finish_file(out):
    """Wait for a directory file's last writes, fsync and close it (on a finishing thread)."""
    try:
        out.close()
        out._raise_error()
        os.fsync(out.fd)
    finally:
        out.release()


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirectoryOutput:
    """A checkpoint directory being built in a temporary sibling of its target (see atomic_directory)."""

    def __init__(self, staging, target):
        self.staging = staging
        self.target = target
        self._pool = buffer_pool()
        self._writers = concurrent.futures.ThreadPoolExecutor(WRITING_THREADS, thread_name_prefix="ttconv-writer")
        self._syncer = concurrent.futures.ThreadPoolExecutor(FINISHING_THREADS, thread_name_prefix="ttconv-fsync")
        self._pending = []

    @contextlib.contextmanager
    def file(self, name):
        """Yield a writer for a new file of the directory (write, reserve/commit). When the block ends
        a helper thread finishes the file (its last buffers written, fsync, close) while the next files
        are written: a model has hundreds of files, and waiting for each one's last write and fsync
        would serialize the disk and the kernel again. Several files finish at once, so that their
        fsyncs share the journal's commits and the disk's cache flushes (Qwen3-0.6B's 311 files,
        model only: 2.10 s -> 1.78 s with four at once instead of one). A file is created and written
        by one of a few writing threads, which the files share (creating a file and starting a thread
        for it cost the converting thread about a sixth of its time on GPT-2's 293 files). A file that
        failed to be created, written or finished is raised at the next file or by wait()."""
        self._raise_failure(finished_only=True)
        path, target = os.path.join(self.staging, name), os.path.join(self.target, name)
        out = _OutputFile(lambda: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), target, self._pool,
                          self._writers)
        try:
            yield out
        except BaseException:
            out.close()
            out.release()
            raise
        out.end()  # here, not on a finishing thread: a writing thread must never wait for a finishing one
        self._pending.append((target, self._syncer.submit(_finish_file, out)))

    def _raise_failure(self, finished_only):
        """Raise the first failure among the files handed over (those finished so far, with
        finished_only); the files that finished well are forgotten."""
        running = []
        for target, future in self._pending:
            if finished_only and not future.done():
                running.append((target, future))
                continue
            exc = future.exception()
            if exc is not None:
                raise exc if isinstance(exc, OutputError) else _output_error(target, exc)
        self._pending = running

    def wait(self):
        """Wait until every file written so far is finished; OutputError for the first that failed."""
        try:
            self._raise_failure(finished_only=False)
        finally:
            self._pending = []

    def close(self):
        """Wait for the helper threads (files still pending are closed, their errors ignored)."""
        self._syncer.shutdown(wait=True)
        self._writers.shutdown(wait=True)
        self._pending = []

    def copy(self, source, name):
        """Copy a file into the directory byte for byte, fsynced."""
        interrupts.check()
        destination = os.path.join(self.staging, name)
        try:
            shutil.copyfile(source, destination)
            _fsync_path(destination)
        except OSError as exc:
            raise _output_error(os.path.join(self.target, name), exc) from None


def _exchange(first, second):
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), second)


def is_tt_checkpoint_dir(path):
    """A directory holding tt-train's metadata.flatbuffer: what a directory conversion replaces."""
    return os.path.isfile(os.path.join(path, METADATA_NAME))


def check_directory_target(path, inputs=(), replaceable=is_tt_checkpoint_dir, kind="a tt-train checkpoint"):
    """Whether path holds a directory that an output may replace (replaceable(path) true; False:
    nothing is there); OutputError when it is an input, inside one, or anything else."""
    path = os.path.abspath(os.fspath(path))
    inputs = [os.path.abspath(os.fspath(p)) for p in inputs]
    for source in inputs:
        if os.path.isdir(source) and os.path.realpath(path).startswith(os.path.realpath(source) + os.sep):
            raise OutputError(f"{path}: is inside the input directory {source}; inputs are never modified "
                              "(give an output path outside it)")
    if not os.path.lexists(path):
        return False
    for source in inputs:
        if os.path.exists(source) and os.path.samefile(path, source):
            raise OutputError(f"{path}: output is the same directory as input {source}; refusing to "
                              "overwrite it (give a new output path)")
    if os.path.isdir(path) and not os.path.islink(path) and replaceable(path):
        return True
    what = "a file" if os.path.isfile(path) else f"a directory that is not {kind}"
    raise OutputError(f"{path}: exists and is {what}; ttconv replaces only {kind} directory "
                      "(give a new path or remove it)")


@contextlib.contextmanager
def atomic_directory(path, inputs=(), replaceable=is_tt_checkpoint_dir, kind="a tt-train checkpoint"):
    """Yield a DirectoryOutput; on success the directory it built replaces path, on any exception it vanishes.

    The directory is built as a temporary sibling, every file and the directory fsynced, then renamed
    into place; an existing directory at path that replaceable() accepts (a tt-train checkpoint by
    default; kind names it in errors) is swapped out only then and removed. Any other existing path
    is refused untouched. SIGINT and SIGTERM wait while the temporary directory is
    created, swapped in or removed, so that a signal leaves either nothing or the complete directory."""
    path = os.path.abspath(os.fspath(path))
    replacing = check_directory_target(path, inputs, replaceable, kind)
    parent = os.path.dirname(path)
    staging = None
    try:
        with interrupts.held():
            try:
                os.makedirs(parent, exist_ok=True)
                staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
            except OSError as exc:
                raise _output_error(path, exc) from None
        out = DirectoryOutput(staging, path)
        try:
            yield out
            out.wait()
        finally:
            out.close()
        interrupts.check()
        try:
            os.chmod(staging, 0o777 & ~_umask())
            _fsync_path(staging)
        except OSError as exc:
            raise _output_error(path, exc) from None
        with interrupts.held():
            _move_into_place(staging, path, replacing)
            staging = None
    except BaseException:
        if staging is not None:
            with interrupts.held():
                shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging, path, replacing):
    try:
        if not replacing:
            os.rename(staging, path)
        elif _exchange(staging, path):
            shutil.rmtree(staging, ignore_errors=True)  # now the old directory
        else:
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=os.path.dirname(path))
            os.rename(path, os.path.join(old, "previous"))
            try:
                os.rename(staging, path)
            except OSError:
                os.rename(os.path.join(old, "previous"), path)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        _fsync_path(os.path.dirname(path))
    except OSError as exc:
        raise _output_error(path, exc) from None
