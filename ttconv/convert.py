"""Llama and GPT-2 conversions: Hugging Face checkpoint + tt-train init file -> tt-train file."""
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .checkpoint import Checkpoint
from .errors import CheckpointError
from .hub import resolve_model
from .mapping import build_plan, canonical_names
from .output import atomic_output
from .progress import Progress
from .ttfile import TtFile, TtWriter

log = logging.getLogger("ttconv")

CHUNK_VALUES = 1 << 18
ZERO_CHUNK_VALUES = 1 << 16
ZERO_VALUE = b"\xca\x00\x00\x00\x00"


@dataclass
class Report:
    """What a conversion did (or, for a dry run, would do)."""

    plan: object
    output_path: str = None
    tensors: int = 0
    values: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    nonfinite: dict = field(default_factory=dict)

    def summary(self):
        rate = self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.tensors} tensors, {self.values:,} parameters, {self.bytes_written:,} bytes written "
            f"in {self.seconds:.2f} s ({rate:.0f} MB/s)"
        )


def _model_type_check(ckpt, family):
    model_type = ckpt.config.get("model_type")
    if family == "llama" and model_type == "gpt2":
        raise CheckpointError(f"{ckpt.directory} is a GPT-2 checkpoint (model_type 'gpt2'); use 'ttconv gpt2'")
    if family == "gpt2" and model_type not in (None, "gpt2"):
        raise CheckpointError(
            f"{ckpt.directory} is a {model_type!r} checkpoint, not GPT-2"
            + ("; use 'ttconv llama'" if model_type == "llama" else "")
        )


def llama_layout(ckpt):
    """Layer count, head counts and head_dim of a Llama-family config."""
    _model_type_check(ckpt, "llama")
    hidden = ckpt.config_int("hidden_size")
    heads = ckpt.config_int("num_attention_heads")
    kv_heads = ckpt.config_int("num_key_value_heads", heads)
    if "head_dim" in ckpt.config and ckpt.config["head_dim"] is not None:
        head_dim = ckpt.config_int("head_dim")
    elif hidden % heads:
        raise CheckpointError(
            f"{ckpt.directory}/config.json: hidden_size {hidden} is not a multiple of "
            f"num_attention_heads {heads} and there is no head_dim"
        )
    else:
        head_dim = hidden // heads
    if heads % kv_heads:
        raise CheckpointError(
            f"{ckpt.directory}/config.json: num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {kv_heads}"
        )
    return {
        "n_layers": ckpt.config_int("num_hidden_layers"),
        "rope_q": heads,
        "rope_kv": kv_heads,
        "head_dim": head_dim,
    }


def gpt2_layout(ckpt):
    """Layer count of a GPT-2 config."""
    _model_type_check(ckpt, "gpt2")
    return {"n_layers": ckpt.config_int("n_layer")}


def plan_conversion(family, tt, ckpt, meta_style=False):
    """Build the plan (which tt tensor comes from which checkpoint tensors)."""
    layout = llama_layout(ckpt) if family == "llama" else gpt2_layout(ckpt)
    tensors = canonical_names(family, ckpt.tensors, ckpt.directory)
    return build_plan(family, tt, tt.parameters(), tensors, layout, meta_style)


class _Buffers:
    """Source and encoded buffers reused for every chunk (fresh memory costs page faults);
    they grow when one chunk (a whole RoPE head of a wide matrix) needs more."""

    def __init__(self):
        self._source = np.empty(CHUNK_VALUES * 4, dtype=np.uint8)
        self._encoded = np.empty(CHUNK_VALUES * 5, dtype=np.uint8)

    def source(self, n_values):
        if self._source.size < n_values * 4:
            self._source = np.empty(n_values * 4, dtype=np.uint8)
        return self._source

    def encoded(self, n_values):
        if self._encoded.size < n_values * 5:
            self._encoded = np.empty(n_values * 5, dtype=np.uint8)
        return self._encoded


def _encode_piece(piece, ckpt, writer, progress, buffers):
    info = piece.tensor
    nonfinite = 0
    if piece.transform == "transpose":
        size = info.rows * info.cols
        encoded, bad = kernels.encode_transposed(ckpt.read_rows(info, buffer=buffers.source(size)),
                                                 buffers.encoded(size))
        writer.write(encoded)
        progress.advance(encoded.nbytes)
        return bad
    cols = info.matrix_shape()[1]
    unit = info.matrix_shape()[0] // piece.heads if piece.transform == "rope" else 1
    step = max(unit, (CHUNK_VALUES // max(cols, 1)) // unit * unit)
    for first in range(0, piece.rows, step):
        last = min(piece.rows, first + step)
        rows = ckpt.read_rows(info, first, last, buffers.source((last - first) * cols))
        out = buffers.encoded(rows.size)
        if piece.transform == "rope":
            encoded, bad = kernels.encode_rope(rows, (last - first) // unit, out)
        else:
            encoded, bad = kernels.encode(rows, out)
        nonfinite += bad
        writer.write(encoded)
        progress.advance(encoded.nbytes)
    return nonfinite


def _write_zeros(count, writer, progress):
    chunk = ZERO_VALUE * min(count, ZERO_CHUNK_VALUES)
    while count:
        n = min(count, ZERO_CHUNK_VALUES)
        writer.write(chunk[: n * 5])
        progress.advance(n * 5)
        count -= n


def write_converted(plan, tt, ckpt, out, progress):
    """Stream the tt file with the plan's tensors replaced into out; returns NaN/Inf counts by key."""
    writer = TtWriter(tt, out)
    buffers = _Buffers()
    nonfinite = {}
    try:
        writer.begin()
        for entry in tt.entries:
            target = plan.targets.get(entry.key)
            if target is None:
                writer.copy_entry(entry)
                continue
            writer.start_value(entry, target.n_values)
            bad = sum(_encode_piece(piece, ckpt, writer, progress, buffers) for piece in target.pieces)
            _write_zeros(target.pad_rows * target.param.cols, writer, progress)
            if bad:
                nonfinite[entry.key] = bad
        writer.finish()
    finally:
        writer.close()
    return nonfinite


def run_conversion(family, init_path, ckpt, output_path, meta_style=False, dry_run=False, quiet=True):
    """Convert (or plan, with dry_run) one checkpoint against one init file."""
    started = time.perf_counter()
    size = os.path.getsize(init_path) if os.path.isfile(init_path) else 0
    with Progress(size, "reading init file", quiet) as progress:
        tt = TtFile(init_path, progress.advance)
    plan = plan_conversion(family, tt, ckpt, meta_style)
    report = Report(plan, output_path)
    report.tensors = len(plan.targets)
    report.values = sum(t.n_values for t in plan.targets.values())
    if dry_run:
        return report
    for notice in plan.notices:
        log.info(notice)
    inputs = [init_path] + sorted({t.path for t in ckpt.tensors.values()})
    with Progress(report.values * 5, "converting", quiet) as progress, atomic_output(output_path, inputs) as out:
        report.nonfinite = write_converted(plan, tt, ckpt, out, progress)
    report.bytes_written = os.path.getsize(output_path)
    report.seconds = time.perf_counter() - started
    if plan.untouched:
        log.info("left unchanged (no checkpoint source): %s", ", ".join(plan.untouched))
    if plan.unused:
        log.warning("checkpoint tensors not used: %s", ", ".join(plan.unused))
    if report.nonfinite:
        log.warning(
            "NaN or Inf values copied as they are in: %s",
            ", ".join(f"{k} ({n})" for k, n in report.nonfinite.items()),
        )
    return report


def open_checkpoint(hf_model, revision=None):
    """A Checkpoint for a local directory or a Hugging Face hub id."""
    return Checkpoint(resolve_model(hf_model, revision))
