"""The directory side of a conversion: a tt-train checkpoint directory written entry by entry.

`directory_output` yields a writer with the interface conversion.write_converted drives for every
format (copy_entry, zero_tensor, zero_counter, write_target, reset_kind). A tensor the plan
fills is written as ttnn 0.81.1 writes one (tensorbin.header_bytes): bfloat16 (float32 for an
optimizer's full-precision master weights), TILE, [1, 1, rows, cols]; the C kernel (or its jax
twin) permutes, transposes, rounds and tiles each block of tile rows straight into the output
file's buffer (a q/k norm vector's columns are permuted the same way). Other tensor files are
copied byte for byte, or keep their header with zero data (a hole the file system reads as
zeros: nothing to write); the metadata, every value in its input order and type, is written
last.
"""
import contextlib
import math

import numpy as np

from .. import kernels
from ..hf.checkpoint import ITEM_SIZES
from ..output import atomic_directory
from . import tensorbin
from .rows import ScratchBuffer
from .ttdir import METADATA_NAME, Value, metadata_bytes, tensor_file_name

TILE = tensorbin.TILE
MAX_BLOCK_BYTES = 1 << 22
# Tensors under an optimizer that restart at zero with the weights they belonged to.
MOMENT_PARTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "first_moment", "second_moment", "kahan_compensation",
                "momentum")
COUNTER_NAMES = ("steps", "m_last_step", "m_current_step_in_scheduler", "m_current_scheduler_index")
INTEGER_TYPES = ("CharValue", "IntValue", "UInt32Value", "SizeTValue")
CPP_DATA_TYPES = {tensorbin.BFLOAT16: 0, tensorbin.FLOAT32: 1}
TILE_LAYOUT = 1


def _tiled(n):
    return -(-n // TILE) * TILE


def rope_source_rows(first, last, head_dim):
    """Source rows of output rows [first, last) of a head-interleaved matrix: row 2i of each head is
    the checkpoint's row i, row 2i+1 its row head_dim/2 + i (for a q/k norm vector, with one head,
    the same of its columns)."""
    out = np.arange(first, last)
    within = out % head_dim
    return out - within + np.where(within % 2 == 0, within // 2, head_dim // 2 + within // 2)


class DirWriter:
    """Writes one converted checkpoint directory (see the module docstring)."""

    value_bytes = 2

    def __init__(self, tt, out):
        self._tt = tt
        self._out = out
        self._values = {}
        self._data_types = {}
        self._scratch = (ScratchBuffer(), ScratchBuffer())  # source rows of each half of a block
        self._whole = ScratchBuffer()  # the whole source matrix of a transpose

    def reset_kind(self, item):
        """"zeros" for an optimizer's moment tensor, "zero" for a step counter, None otherwise."""
        group = self._tt.group(item.key)
        if group == "model":
            return None
        parts = item.key.split("/")
        if item.tensor is not None:
            return "zeros" if group == "optimizer" and parts[1] in MOMENT_PARTS else None
        return "zero" if parts[-1] in COUNTER_NAMES and item.value.type in INTEGER_TYPES else None

    def copy_entry(self, item, key):
        if item.tensor is None:
            self._values[key] = item.value
        elif item.tensor.filename is None:  # a tensor of a directory built from config.json: zeros
            self.zero_tensor(item, key)
        else:
            name = tensor_file_name(key) if key != item.key else item.tensor.filename
            self._out.copy(self._tt.tensor_path(item.tensor), name)
            self._values[key] = Value("StringValue", name)

    def zero_counter(self, item, key):
        self._values[key] = Value(item.value.type, 0)

    def zero_tensor(self, item, key):
        """The tensor with every value zero: its own header (a built tensor: a bfloat16 one) and zero data."""
        name = tensor_file_name(key)
        tensor = item.tensor
        if tensor.filename is None:
            rows, cols = math.prod(tensor.dims[:-1]), tensor.dims[-1]
            header = tensorbin.header_bytes(rows, cols)
            data_size = _tiled(rows) * _tiled(cols) * 2
        else:
            parsed = tensor.header
            with open(self._tt.tensor_path(tensor), "rb") as source:
                header = source.read(parsed.data_start)
            data_size = parsed.file_size - parsed.data_start
        with self._out.file(name) as out:
            out.write(header)
            out.end_with_zeros(len(header) + data_size)
        self._values[key] = Value("StringValue", name)

    def write_target(self, item, key, target, ckpt, progress):
        """The target's values from the checkpoint as a new tensor file; returns the NaN/Inf count."""
        data_type = tensorbin.FLOAT32 if target.float32 else tensorbin.BFLOAT16
        rows, cols = target.param.rows, target.param.cols
        name = tensor_file_name(key)
        header = tensorbin.header_bytes(rows, cols, data_type)
        width = 2 if data_type == tensorbin.BFLOAT16 else 4
        with self._out.file(name) as out:
            out.write(header)
            nonfinite = _TileWriter(target, ckpt, out, width, self._scratch, self._whole).run(progress)
        self._values[key] = Value("StringValue", name)
        self._data_types[key] = data_type
        return nonfinite

    def finish(self):
        """Write metadata.flatbuffer: every value in order, the written tensors' data type and layout
        set to what their files now hold."""
        values = dict(self._values)
        for key, data_type in self._data_types.items():
            for field, code in (("data_type", CPP_DATA_TYPES[data_type]), ("layout", TILE_LAYOUT)):
                old = values.get(f"{key}/{field}")
                if old is not None and old.type in INTEGER_TYPES:
                    values[f"{key}/{field}"] = Value(old.type, code)
        with self._out.file(METADATA_NAME) as out:
            out.write(metadata_bytes(values))


class _TileWriter:
    """Streams one target into a tensor file: blocks of whole tile rows, each filled by kernels.tile
    from the rows of the checkpoint tensors it covers (permuted or transposed as the plan says).
    A block's two halves are read and tiled at once, by this thread and a helper (reading a file
    and the kernel both release the GIL)."""

    def __init__(self, target, ckpt, out, width, scratch, whole):
        self.target, self.ckpt, self.out, self.width = target, ckpt, out, width
        self.padded_cols = _tiled(target.param.cols)
        self.padded_rows = _tiled(target.param.rows)
        self.scratch = scratch
        self.out_dtype = "bf16" if width == 2 else "f32"
        self.segments, first = [], 0
        for piece in target.pieces:
            self.segments.append((first, piece))
            first += piece.rows
        self.data_rows = first
        # a transposed piece needs its whole matrix: read once, before the halves share the work
        self.transposed = {piece.tensor.name: _read_whole(ckpt, piece.tensor, whole if k == 0 else ScratchBuffer())
                           for k, piece in enumerate(p for p in target.pieces if p.transform == "transpose")}

    def run(self, progress):
        tile_row_bytes = TILE * self.padded_cols * self.width
        limit = max(1, MAX_BLOCK_BYTES // tile_row_bytes)
        nonfinite, row = 0, 0
        while row < self.padded_rows:
            room = self.out.room()
            n_rows = min(self.padded_rows - row, TILE * max(1, min(room // tile_row_bytes, limit)))
            nbytes = n_rows // TILE * tile_row_bytes
            end = row + n_rows
            block = self.out.reserve(nbytes) if nbytes <= room else None
            lent = block is not None
            # The file's header shifts every tile row off the output buffers' boundaries: the tile row
            # that straddles the end of this one is tiled apart and copied in. This thread tiles it
            # alongside the helper's half of the block, rather than alone after the block.
            spill = lent and 0 < room - nbytes < tile_row_bytes and end < self.padded_rows
            if not lent:
                block = np.empty(nbytes, dtype=np.uint8)
            if end > self.data_rows:
                block[:] = 0
            middle = row + n_rows // TILE // 2 * TILE
            helper = kernels.helper() if middle > row else None
            other = None if helper is None else helper.submit(self._fill_rows, middle, end, row, block,
                                                              self.scratch[1])
            nonfinite += self._fill_rows(row, end if other is None else middle, row, block, self.scratch[0])
            if spill:
                spilled = np.empty(tile_row_bytes, dtype=np.uint8)
                if end + TILE > self.data_rows:
                    spilled[:] = 0
                nonfinite += self._fill_rows(end, end + TILE, end, spilled, self.scratch[0])
            if other is not None:
                nonfinite += other.result()
            if lent:
                self.out.commit(nbytes)
            else:
                self.out.write(block)
            if spill:
                self.out.write(spilled)
                end += TILE
            progress.advance(min(end - row, max(0, self.target.param.rows - row)) * self.target.param.cols * 2)
            row = end
        return nonfinite

    def _fill_rows(self, begin, end, block_row, block, scratch):
        """Output rows [begin, end) into block, whose first row is block_row."""
        nonfinite = 0
        for first, piece in self.segments:
            lo, hi = max(begin, first), min(end, first + piece.rows)
            if lo < hi:
                nonfinite += self._fill(piece, lo - first, hi - first, block, lo - block_row, scratch)
        return nonfinite

    def _fill(self, piece, lo, hi, block, first_row, scratch):
        """Rows [lo, hi) of the piece into block from row first_row on."""
        info = piece.tensor
        if piece.transform == "transpose":
            return kernels.tile(self.transposed[info.name], block, self.padded_cols, rows=np.arange(lo, hi),
                                first_row=first_row, transposed=True, out_dtype=self.out_dtype)
        cols = info.matrix_shape()[1]
        columns = rope_source_rows(0, cols, cols) if piece.transform == "rope_columns" else None
        if piece.transform == "rope":
            head_dim = info.matrix_shape()[0] // piece.heads
            start, stop = lo // head_dim * head_dim, -(-hi // head_dim) * head_dim
            rows = rope_source_rows(lo, hi, head_dim) - start
        else:
            start, stop, rows = lo, hi, None
        itemsize = 4 if info.dtype == "F32" else 2
        source = self.ckpt.read_rows(info, start, stop, scratch.take((stop - start) * cols * itemsize))
        return kernels.tile(source, block, self.padded_cols, rows=rows, first_row=first_row,
                            out_dtype=self.out_dtype, columns=columns)


def _read_whole(ckpt, info, scratch):
    """A checkpoint tensor's whole matrix, into scratch: its two halves read at once, by this thread and
    the kernel's helper (reading releases the GIL)."""
    rows, cols = info.matrix_shape()
    row_bytes = cols * ITEM_SIZES[info.dtype]
    buffer = scratch.take(rows * row_bytes)
    helper, middle = kernels.helper(), rows // 2
    if helper is None or middle == 0:
        return ckpt.read_rows(info, 0, rows, buffer)
    lower = helper.submit(ckpt.read_rows, info, middle, rows, buffer[middle * row_bytes:])
    upper = ckpt.read_rows(info, 0, middle, buffer[:middle * row_bytes])
    lower.result()
    return buffer[:rows * row_bytes].view(upper.dtype).reshape(rows, cols)


@contextlib.contextmanager
def directory_output(tt, path, inputs=()):
    """Yield a DirWriter whose directory replaces path once every entry of tt was written (atomic_directory)."""
    with atomic_directory(path, inputs) as out:
        writer = DirWriter(tt, out)
        yield writer
        writer.finish()
