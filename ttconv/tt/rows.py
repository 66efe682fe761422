"""Row access to a tensor of a tt-train file or directory, for streaming export.

A reader's row_source(param) gives an object whose read(first, count) returns a RowBlock:
stored rows that cover rows [first, first + count) of the tensor, raw as the file holds them
(msgpack float32 bytes, TILE or row-major words), so that kernels.gather untilizes, picks and
rounds them in one pass (RowGatherer). Blocks are views of a buffer the source reuses: each is
valid until the next read.
"""
import os
from dataclasses import dataclass

import numpy as np

from .. import kernels
from ..errors import TtFileError


@dataclass
class RowBlock:
    """Stored rows of a tensor: data (raw, see kernels.gather), its source dtype name, whether it is
    tiled, the values a stored row holds and the tensor row its first stored row is."""

    data: np.ndarray
    dtype: str
    tiled: bool
    stored_cols: int
    start: int


class ScratchBuffer:
    """A uint8 buffer reused from read to read, grown when a read needs more (so that large reads do
    not fault fresh pages in every time). It is page-aligned, and grows to twice what a read needs, so
    that the jax fallback works on what is read into it where it lies, also when it pads the rows read
    up to a power of two (pages past a read that nothing writes take no memory)."""

    def __init__(self):
        self._buffer = kernels.aligned_empty(0)

    def take(self, nbytes):
        if self._buffer.size < nbytes:
            self._buffer = kernels.aligned_empty(2 * nbytes)
        return self._buffer[:nbytes]


class DecodedRows:
    """Rows of a tensor decoded whole to float32 (for what has no raw row access: msgpack arrays
    with other number encodings, tensors sharded across devices): one tensor in memory."""

    def __init__(self, values, cols):
        self._values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, cols)

    def read(self, first, count):
        return RowBlock(self._values.reshape(-1), "f32", False, self._values.shape[1], 0)

    def close(self):
        self._values = None


class FileRows:
    """Raw row access to rows stored one after another in a file from byte base on: rows of cols values
    of width bytes (source dtype name for kernels.gather), read in whole groups of align rows (tile rows
    of a TILE tensor), never past stored_rows."""

    def __init__(self, path, base, stored_rows, cols, width, dtype, scratch, align=1):
        self._path = path
        self._base = base
        self._stored_rows = stored_rows
        self._cols = cols
        self._row_bytes = cols * width
        self._dtype = dtype
        self._words = {2: np.uint16, 4: np.float32, 5: np.uint8}[width]
        self._align = align
        self._scratch = scratch
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, first, count):
        start = first // self._align * self._align
        end = min(-(-(first + count) // self._align) * self._align, self._stored_rows)
        buffer = self._scratch.take((end - start) * self._row_bytes)
        read_exactly(self._fd, buffer, self._base + start * self._row_bytes, self._path)
        return RowBlock(buffer.view(self._words), self._dtype, self._align > 1, self._cols, start)

    def close(self):
        os.close(self._fd)


class RunRows:
    """Raw row access to a tensor whose rows are runs of rows stored one after another from byte base on
    (runs: (first stored row, count), in the tensor's order; a part of a fused tensor, every rank's
    slice in turn): rows of cols values of width bytes, row-major."""

    def __init__(self, path, base, runs, cols, width, dtype, scratch):
        self._path = path
        self._base = base
        self._runs = runs
        self._starts = np.cumsum([0] + [count for _, count in runs])
        self._row_bytes = cols * width
        self._cols = cols
        self._dtype = dtype
        self._words = {2: np.uint16, 4: np.float32}[width]
        self._scratch = scratch if scratch is not None else ScratchBuffer()
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, first, count):
        buffer = self._scratch.take(count * self._row_bytes)
        last = first + count
        for (stored, length), start in zip(self._runs, self._starts):
            lo, hi = max(first, start), min(last, start + length)
            if lo < hi:
                piece = buffer[(lo - first) * self._row_bytes:(hi - first) * self._row_bytes]
                read_exactly(self._fd, piece, self._base + (stored + lo - start) * self._row_bytes, self._path)
        return RowBlock(buffer.view(self._words), self._dtype, False, self._cols, first)

    def close(self):
        os.close(self._fd)


def read_exactly(fd, buffer, offset, path):
    """Fill buffer (uint8) from fd at offset; TtFileError when the file ends first."""
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise TtFileError(f"{path}: file ended while reading (truncated?)")
        done += n
    return buffer


SPLIT_BYTES = 1 << 20  # a gather with this much output is shared with the helper thread
SPLIT_ROWS = 64  # at a multiple of this many rows: a transpose's runs stay whole


def _gather_in_halves(block, rows, out, out_dtype, cols=None, columns=None, transposed=False):
    """kernels.gather of a block's rows into out, the second half of a large call on kernels.helper()
    (both cores: for a transpose the kernel, not the disk, is the slower side); False as
    kernels.gather."""
    row_bytes = (len(columns) if columns is not None else cols) * kernels.GATHER_OUT[out_dtype][1]
    middle = len(rows) // 2 // SPLIT_ROWS * SPLIT_ROWS
    helper = kernels.helper() if middle and len(rows) * row_bytes >= SPLIT_BYTES else None

    def part(first, last):
        return kernels.gather(block.data, block.dtype, block.stored_cols, rows[first:last],
                              out[first * row_bytes:last * row_bytes], out_dtype, tiled=block.tiled, cols=cols,
                              columns=columns, transposed=transposed)

    if helper is None:
        return part(0, len(rows))
    second = helper.submit(part, middle, len(rows))
    first_ok = part(0, middle)
    return second.result() and first_ok


class RowGatherer:
    """kernels.gather over a parameter's stored rows (reader.row_source): each range of rows read once
    for consecutive calls, and the parameter decoded whole instead when its msgpack values turn out
    not to be all float32."""

    def __init__(self, reader, param, scratch):
        self._reader = reader
        self._param = param
        self._source = reader.row_source(param, scratch)
        self._read = None
        self._block = None

    def gather(self, first, count, rows, out, out_dtype, **how):
        """Rows (relative to tensor row first) of stored rows first..first + count into out as out_dtype;
        how: kernels.gather's cols, columns, transposed."""
        for _ in range(2):
            if self._read != (first, count):
                self._block, self._read = self._source.read(first, count), (first, count)
            if _gather_in_halves(self._block, rows + (first - self._block.start), out, out_dtype, **how):
                return
            decoded = self._reader.decoded_rows(self._param)
            self._source.close()
            self._source, self._read = decoded, None
        raise AssertionError(f"{self._param.name}: decoded values could not be gathered")

    def float32_rows(self, first, last):
        """Rows [first, last) as float32 [last - first, cols]."""
        cols = self._param.cols
        out = np.empty((last - first) * cols * 4, dtype=np.uint8)
        self.gather(first, last - first, np.arange(last - first, dtype=np.uint32), out, "f32", cols=cols)
        return out.view(np.float32).reshape(last - first, cols)

    def close(self):
        self._source.close()
