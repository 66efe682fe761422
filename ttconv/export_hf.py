"""`ttconv to-hf`: a Hugging Face checkpoint folder from a tt-train file.

The conversion plan that maps the original checkpoint onto the tt file is built as for
a forward conversion, then every step is undone: padding rows dropped, [k; v] split,
RoPE interleave (of q/k rows and Qwen3's q/k norm vectors) and Conv1D transposes
reversed, tied tensors written once. Tensors the tt file does not hold (mask buffers,
positions beyond the tt context) are copied from the original checkpoint.
"""
import json
import os
import time

import ml_dtypes
import numpy as np

from . import kernels
from .conversion import Report, plan_conversion
from .errors import OutputError
from .hf.checkpoint import Checkpoint
from .hf.hub import resolve_model
from .hf.tokenizer import copy_tokenizer_files
from .output import atomic_output
from .progress import Progress
from .tt.formats import open_tt

OUTPUT_DTYPES = {
    "f32": ("F32", np.dtype("<f4"), "float32"),
    "bf16": ("BF16", np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    "f16": ("F16", np.dtype("<f2"), "float16"),
}


def _undo(piece, rows):
    """Checkpoint tensor (float32, stored shape) from its rows in the tt tensor."""
    if piece.transform == "rope":
        rows = kernels.rope_rows(rows, piece.heads, inverse=True)
    elif piece.transform == "rope_columns":  # a norm vector: its values are one head's rows
        rows = kernels.rope_rows(rows.reshape(-1, 1), 1, inverse=True)
    elif piece.transform == "transpose":
        rows = kernels.transpose(rows)
    return rows.reshape(piece.tensor.shape)


class _LastDecoded:
    """The most recently decoded tt tensor, so that the pieces of one tensor (k and v of
    kv_linear) are recovered from a single decode when they are written one after another."""

    def __init__(self, tt):
        self._tt = tt
        self._key = None
        self._values = None

    def rows(self, param):
        if self._key != param.data.key:
            self._values = None  # dropped before the next tensor is read: one decoded tensor at a time
            self._values = self._tt.read_values(param.data).reshape(param.rows, param.cols)
            self._key = param.data.key
        return self._values


def _recovered_tensors(plan, tt):
    """{checkpoint name: loader of its float32 values}, the pieces of each tt tensor adjacent,
    tok_emb before fc so a tied source takes the embedding."""
    order = sorted(plan.targets.values(), key=lambda t: t.param.name.endswith("/fc/weight"))
    decoded = _LastDecoded(tt)
    recovered = {}
    for target in order:
        row = 0
        for piece in target.pieces:
            first = row
            row += piece.rows
            if piece.tensor.name in recovered or piece.rows < piece.shape[0]:
                continue  # tied duplicate, or cropped (the full tensor comes from the original)
            recovered[piece.tensor.name] = _loader(decoded, target, piece, first)
    return recovered


def _loader(decoded, target, piece, first):
    def load():
        values = decoded.rows(target.param)
        return _undo(piece, np.ascontiguousarray(values[first:first + piece.rows]))

    return load


def _original_loader(ckpt, info):
    def load():
        raw = ckpt.read_rows(info)
        if info.dtype == "BF16":
            raw = raw.view(ml_dtypes.bfloat16)
        return raw.astype(np.float32).reshape(info.shape)

    return load


def _safetensors_header(tensors, st_dtype, itemsize):
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, info in tensors:
        size = int(np.prod(info.shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(info.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def export_hf(family, tt_path, hf_model, output_dir, dtype="f32", meta_style=False, revision=None, quiet=True):
    """Write model.safetensors, config.json and tokenizer files for a tt-train file or checkpoint directory.

    The original checkpoint (hf_model, folder or hub id) supplies the config, the
    tensor names and layout, and any tensor the tt file does not hold. Round trip
    HF -> tt -> HF is bit-exact for float32; dtype "bf16"/"f16" rounds to nearest even.
    Returns a Report (tensors and values written to model.safetensors).

    >>> export_hf("llama", "out/llama.msgpack", "examples/llama-mini", "out/hf")  # doctest: +SKIP
    """
    started = time.perf_counter()
    if dtype not in OUTPUT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(OUTPUT_DTYPES)}, not {dtype!r}")
    st_dtype, np_dtype, config_dtype = OUTPUT_DTYPES[dtype]
    model_dir = resolve_model(hf_model, revision)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputError(f"{output_dir}: exists and is not a directory")
    if os.path.isdir(output_dir) and os.path.abspath(output_dir) == os.path.abspath(model_dir):
        raise OutputError(f"{output_dir}: is the original checkpoint folder; choose another output folder")
    ckpt = Checkpoint(model_dir)
    created = False
    try:
        tt = open_tt(tt_path)
        plan = plan_conversion(family, tt, ckpt, meta_style, tt.weights())
        recovered = _recovered_tensors(plan, tt)
        by_name = {info.name: info for info in ckpt.tensors.values()}
        loaders = dict(recovered)
        loaders.update((name, _original_loader(ckpt, info)) for name, info in sorted(by_name.items())
                       if name not in recovered)
        header = _safetensors_header([(n, by_name[n]) for n in loaders], st_dtype, np_dtype.itemsize)
        values = sum(int(np.prod(by_name[n].shape, dtype=np.int64)) for n in loaders)
        total = values * np_dtype.itemsize
        created = not os.path.exists(output_dir)
        os.makedirs(output_dir, exist_ok=True)
        target = os.path.join(output_dir, "model.safetensors")
        with Progress(total, "writing safetensors", quiet) as progress, \
                atomic_output(target, [tt_path] + [i.path for i in by_name.values()]) as out:
            out.write(header)
            for name, load in loaders.items():
                data = np.ascontiguousarray(load().astype(np_dtype, copy=False)).view(np.uint8).reshape(-1)
                out.write(data)
                progress.advance(data.size)
    except BaseException:
        if created:
            os.rmdir(output_dir)  # made here and still empty: the safetensors file is written atomically
        raise
    finally:
        ckpt.close()
    config = dict(ckpt.config)
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = config_dtype
    with atomic_output(os.path.join(output_dir, "config.json")) as out:
        out.write(json.dumps(config, indent=2).encode("utf-8") + b"\n")
    copy_tokenizer_files(model_dir, output_dir)
    return Report(plan, output_dir, tensors=len(loaders), values=values, bytes_written=os.path.getsize(target),
                  seconds=time.perf_counter() - started, state=tt.weights_note or "")
