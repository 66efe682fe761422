"""Row access to a tensor of a tt-train file or directory, for streaming export.

A reader's row_source(param) gives an object whose read(first, count) returns a RowBlock:
stored rows that cover rows [first, first + count) of the tensor, raw as the file holds them
(msgpack float32 bytes, TILE or row-major words), so that kernels.gather untilizes, picks and
rounds them in one pass. Blocks are views of a buffer the source reuses: each is valid until the
next read.
"""
import os
from dataclasses import dataclass

import numpy as np

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
    not fault fresh pages in every time)."""

    def __init__(self):
        self._buffer = np.empty(0, dtype=np.uint8)

    def take(self, nbytes):
        if self._buffer.size < nbytes:
            self._buffer = np.empty(nbytes, dtype=np.uint8)
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
