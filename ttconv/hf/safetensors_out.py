"""Writing a Hugging Face weights folder as save_pretrained shapes it: safetensors files split at a
maximum shard size, with model.safetensors.index.json when there are several.

Every output shape is known before any data, so each file's header is written first and the
tensors are streamed in after it, in the order given (tensors are never held whole here).
"""
import json
import re
from dataclasses import dataclass

import numpy as np

from ..errors import TtconvError
from .checkpoint import INDEX_NAME, ITEM_SIZES

DEFAULT_MAX_SHARD_SIZE = "5GB"
SHARD_PATTERN = "model{suffix}.safetensors"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text):
    """Bytes of a size such as 5GB, 500MB, 2GiB or 1000000 (KB/MB/GB/TB are powers of ten, as in
    save_pretrained's max_shard_size; KiB/MiB/GiB/TiB powers of two)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if unit not in _UNITS:
        raise TtconvError(f"max shard size {text!r} is not a size like 5GB, 500MB, 2GiB or a number of bytes")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise TtconvError(f"max shard size {text!r} must be larger than zero")
    return size


@dataclass
class OutTensor:
    """A tensor of the output: name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * ITEM_SIZES[self.dtype]


def plan_shards(tensors, max_shard_size):
    """{file name: [OutTensor]} in order, split as save_pretrained splits a state dict (huggingface_hub's
    rule: tensors in order, a new file before one that would go past the size, a larger tensor alone)."""
    from huggingface_hub import split_state_dict_into_shards_factory  # only an export needs it (~9 ms to import)

    by_name = {t.name: t for t in tensors}
    split = split_state_dict_into_shards_factory(
        by_name, get_storage_size=lambda t: t.nbytes, filename_pattern=SHARD_PATTERN,
        max_shard_size=max_shard_size)
    return {name: [by_name[n] for n in names] for name, names in split.filename_to_tensors.items()}


def header_bytes(tensors):
    """The 8-byte length and JSON header of a safetensors file holding tensors in this order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for tensor in tensors:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def index_bytes(files):
    """model.safetensors.index.json for {file name: [OutTensor]}, as save_pretrained writes it."""
    weight_map = {t.name: name for name, tensors in files.items() for t in tensors}
    total = sum(t.nbytes for tensors in files.values() for t in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")


class _CountingSink:
    """A file's writer that checks each tensor gets exactly its bytes."""

    def __init__(self, out, tensor):
        self._out = out
        self.tensor = tensor
        self.written = 0

    def reserve(self, nbytes):
        return self._out.reserve(nbytes)

    def room(self):
        return self._out.room()

    def commit(self, nbytes):
        self.written += nbytes
        self._out.commit(nbytes)

    def write(self, data):
        self.written += memoryview(data).nbytes
        self._out.write(data)


def write_weights(directory, tensors, max_shard_size, fill):
    """Write tensors (OutTensor, in order) into directory (an output.DirectoryOutput) as one
    model.safetensors or shards with an index; fill(tensor, sink) writes a tensor's bytes through
    sink (write, or reserve/room/commit). Returns {file name: [OutTensor]}."""
    files = plan_shards(tensors, max_shard_size)
    for name, in_file in files.items():
        with directory.file(name) as out:
            out.write(header_bytes(in_file))
            for tensor in in_file:
                sink = _CountingSink(out, tensor)
                fill(tensor, sink)
                if sink.written != tensor.nbytes:
                    raise AssertionError(f"{tensor.name}: {sink.written} bytes written, {tensor.nbytes} expected")
    if len(files) > 1:
        with directory.file(INDEX_NAME) as out:
            out.write(index_bytes(files))
    return files
