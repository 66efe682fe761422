"""Hugging Face checkpoints: config.json plus safetensors files, read into numpy.

Safetensors headers are checked before any tensor is touched: sizes, dtypes,
offsets inside the file and not overlapping. Tensors are read row range by row
range, so memory stays bounded by what the caller asks for.
"""
import json
import math
import os
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# numpy dtype used to hold each supported safetensors dtype (BF16 as raw uint16 bits)
NUMPY_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "U16": 2, "I16": 2, "F16": 2,
    "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}


@dataclass
class TensorInfo:
    """Where one tensor lies: file, dtype, shape and absolute byte range."""

    name: str
    path: str
    dtype: str
    shape: tuple
    begin: int
    end: int

    @property
    def rows(self):
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def cols(self):
        return self.shape[-1] if self.shape else 1

    def matrix_shape(self):
        """Shape as tt-train sees it: 1-D tensors are one row."""
        return (self.rows, self.cols)


def read_safetensors_header(path):
    """Parse and check a safetensors header; returns {name: TensorInfo}."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
            header_len = int.from_bytes(handle.read(8), "little")
            if header_len > size - 8:
                raise CheckpointError(
                    f"{path}: header claims {header_len} bytes but the file has {size - 8} after it "
                    "(truncated or not a safetensors file)"
                )
            if header_len > MAX_HEADER_BYTES:
                raise CheckpointError(f"{path}: header of {header_len} bytes is larger than {MAX_HEADER_BYTES}")
            raw = handle.read(header_len)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: header is not valid JSON (corrupt or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_info(path, name, meta, data_start, data_size)
    spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
    for (_, end_a, name_a), (begin_b, _, name_b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{path}: tensors {name_a} and {name_b} overlap")
    return tensors


def _tensor_info(path, name, meta, data_start, data_size):
    bad = f"{path}: tensor {name}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{bad}: header entry is not an object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEM_SIZES:
        raise CheckpointError(f"{bad}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CheckpointError(f"{bad}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list) or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise CheckpointError(f"{bad}: data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise CheckpointError(
            f"{bad}: data_offsets [{begin}, {end}] lie outside the {data_size} data bytes of the file (truncated?)"
        )
    expected = math.prod(shape) * ITEM_SIZES[dtype]
    if end - begin != expected:
        raise CheckpointError(f"{bad}: {end - begin} bytes for shape {shape} of {dtype}, expected {expected}")
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin, data_start + end)


def _load_json(path, what):
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read {what}: {exc.strerror}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: {what} is not valid JSON") from None


class Checkpoint:
    """A local Hugging Face model directory with config.json and safetensors weights."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: not a directory (expected a Hugging Face model folder)")
        self.config = _load_json(os.path.join(self.directory, "config.json"), "config.json")
        if not isinstance(self.config, dict):
            raise CheckpointError(f"{self.directory}/config.json: expected a JSON object")
        self.tensors = self._find_tensors()
        self._handles = {}
        self._handles_lock = threading.Lock()

    def _find_tensors(self):
        index_path = os.path.join(self.directory, INDEX_NAME)
        single_path = os.path.join(self.directory, SINGLE_NAME)
        if os.path.exists(index_path):
            return self._sharded(index_path)
        if os.path.exists(single_path):
            return read_safetensors_header(single_path)
        names = os.listdir(self.directory)
        if any(n.endswith((".bin", ".pt", ".pth", ".ckpt")) for n in names):
            raise CheckpointError(
                f"{self.directory}: only pickled PyTorch weights (.bin) found; ttconv reads safetensors only "
                "and never unpickles files. Convert them to model.safetensors first, or download the "
                "safetensors revision of the model"
            )
        raise CheckpointError(f"{self.directory}: no {SINGLE_NAME} or {INDEX_NAME} found")

    def _sharded(self, index_path):
        index = _load_json(index_path, "safetensors index")
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index_path}: no weight_map of tensor name -> shard file")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(self.directory, shard)
            if os.path.basename(shard) != shard:
                raise CheckpointError(f"{index_path}: shard name {shard!r} is not a plain file name")
            if not os.path.exists(shard_path):
                raise CheckpointError(f"{index_path}: names shard {shard}, which is missing")
            in_shard = read_safetensors_header(shard_path)
            for name, file_name in weight_map.items():
                if file_name != shard:
                    continue
                if name not in in_shard:
                    raise CheckpointError(f"{index_path}: maps {name} to {shard}, which has no such tensor")
                tensors[name] = in_shard[name]
        return tensors

    def config_int(self, key, default=None):
        """An integer config value; errors when it is missing (without default) or not an integer."""
        value = self.config.get(key, default)
        if value is None and default is None:
            raise CheckpointError(f"{self.directory}/config.json: missing {key!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{self.directory}/config.json: {key!r} is {value!r}, expected a positive integer")
        return value

    def read_rows(self, info, first=0, last=None, buffer=None):
        """Rows [first, last) of a tensor as a 2-D numpy array in its stored dtype.

        buffer, a uint8 array, is filled and viewed instead of allocating when it is large enough."""
        if info.dtype not in NUMPY_DTYPES:
            raise CheckpointError(
                f"{info.path}: tensor {info.name} is {info.dtype}; ttconv converts F32, F16 and BF16 only"
            )
        rows, cols = info.matrix_shape()
        last = rows if last is None else last
        dtype = NUMPY_DTYPES[info.dtype]
        nbytes = (last - first) * cols * dtype.itemsize
        if buffer is not None and buffer.size >= nbytes:
            out = buffer[:nbytes].view(dtype).reshape(last - first, cols)
        else:
            out = np.empty((last - first, cols), dtype=dtype)
        handle = self._handle(info.path)
        handle.seek(info.begin + first * cols * dtype.itemsize)
        if handle.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise CheckpointError(f"{info.path}: file ended while reading {info.name}")
        return out

    def read_bytes(self, info, offset, buffer):
        """Fill buffer (uint8) with a tensor's stored bytes from offset on (bytes into its data)."""
        if offset + buffer.size > info.end - info.begin:
            raise ValueError(f"bytes {offset}..{offset + buffer.size} are outside {info.name}")
        handle = self._handle(info.path)
        handle.seek(info.begin + offset)
        if handle.readinto(memoryview(buffer)) != buffer.size:
            raise CheckpointError(f"{info.path}: file ended while reading {info.name}")
        return buffer

    def _handle(self, path):
        """This thread's handle of a file (threads may read rows at once, each seeking its own)."""
        key = (threading.get_ident(), path)
        with self._handles_lock:
            if key not in self._handles:
                self._handles[key] = open(path, "rb")
            return self._handles[key]

    def close(self):
        with self._handles_lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()
