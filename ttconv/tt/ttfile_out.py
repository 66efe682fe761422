"""The msgpack side of a conversion: a tt-train file written entry by entry in its source's order.

`msgpack_output` yields a writer with the interface conversion.write_converted drives for every
format: copy_entry, zero_tensor, zero_counter, write_target (the plan's checkpoint rows encoded
as msgpack float32, straight into the output's buffers) and reset_kind.
"""
import contextlib
import functools

import numpy as np

from .. import kernels
from ..output import atomic_output
from .training import reset_kind
from .ttfile import TtWriter, pack_int

CHUNK_VALUES = 1 << 18
ZERO_CHUNK_VALUES = 1 << 16
ZERO_VALUE = b"\xca\x00\x00\x00\x00"
VALUE_BYTES = 5


class _Buffers:
    """Source and encoded buffers reused for every chunk (fresh memory costs page faults);
    they grow when one chunk (a whole RoPE head of a wide matrix) needs more."""

    def __init__(self):
        self._source = np.empty(CHUNK_VALUES * 4, dtype=np.uint8)
        self._encoded = np.empty(CHUNK_VALUES * VALUE_BYTES, dtype=np.uint8)

    def source(self, n_values):
        if self._source.size < n_values * 4:
            self._source = np.empty(n_values * 4, dtype=np.uint8)
        return self._source

    def encoded(self, n_values):
        if self._encoded.size < n_values * VALUE_BYTES:
            self._encoded = np.empty(n_values * VALUE_BYTES, dtype=np.uint8)
        return self._encoded


class MsgpackWriter:
    """Writes one converted tt-train msgpack file (see the module docstring)."""

    value_bytes = VALUE_BYTES

    def __init__(self, tt, out):
        self._writer = TtWriter(tt.open_source(), out)
        self._buffers = _Buffers()

    reset_kind = staticmethod(reset_kind)

    def begin(self):
        self._writer.begin()

    def finish(self):
        self._writer.finish()

    def close(self):
        self._writer.close()

    def copy_entry(self, entry, key):
        self._writer.copy_entry(entry, key)

    def zero_tensor(self, entry, key):
        self._writer.zero_array(entry, entry.n_elements, key)

    def zero_counter(self, entry, key):
        self._writer.replace_value(entry, pack_int(0), key)

    def write_target(self, entry, key, target, ckpt, progress):
        """The target's values from the checkpoint as the entry's array; returns the NaN/Inf count."""
        self._writer.start_value(entry, target.n_values, key)
        nonfinite = sum(self._encode_piece(piece, ckpt, progress) for piece in target.pieces)
        self._write_zeros(target.pad_rows * target.param.cols, progress)
        return nonfinite

    def _emit(self, encoder, source, n_values, progress):
        """Encode n_values with encoder(source, out) straight into the output's buffer when it lends one."""
        room = self._writer.reserve(n_values)
        encoded, bad = encoder(source, out=room if room is not None else self._buffers.encoded(n_values))
        if room is not None and np.shares_memory(encoded, room):
            self._writer.commit(n_values)
        else:
            self._writer.write(encoded)
        progress.advance(n_values * VALUE_BYTES)
        return bad

    def _encode_piece(self, piece, ckpt, progress):
        info = piece.tensor
        if piece.transform == "transpose":
            size = info.rows * info.cols
            rows = ckpt.read_rows(info, buffer=self._buffers.source(size))
            return self._emit(kernels.encode_transposed, rows, size, progress)
        cols = info.matrix_shape()[1]
        unit = info.matrix_shape()[0] // piece.heads if piece.transform == "rope" else 1
        step = max(unit, (CHUNK_VALUES // max(cols, 1)) // unit * unit)
        nonfinite = 0
        for first in range(0, piece.rows, step):
            last = min(piece.rows, first + step)
            rows = ckpt.read_rows(info, first, last, self._buffers.source((last - first) * cols))
            if piece.transform == "rope":
                encoder = functools.partial(kernels.encode_rope, n_heads=(last - first) // unit)
            else:
                encoder = kernels.encode
            nonfinite += self._emit(encoder, rows, rows.size, progress)
        return nonfinite

    def _write_zeros(self, count, progress):
        chunk = ZERO_VALUE * min(count, ZERO_CHUNK_VALUES)
        while count:
            n = min(count, ZERO_CHUNK_VALUES)
            self._writer.write(chunk[: n * VALUE_BYTES])
            progress.advance(n * VALUE_BYTES)
            count -= n


@contextlib.contextmanager
def msgpack_output(tt, path, inputs=()):
    """Yield a MsgpackWriter whose file replaces path once every entry of tt was written (atomic_output)."""
    with atomic_output(path, inputs) as out:
        writer = MsgpackWriter(tt, out)
        try:
            writer.begin()
            yield writer
            writer.finish()
        finally:
            writer.close()
