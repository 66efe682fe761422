"""Llama and GPT-2 conversions: Hugging Face checkpoint + tt-train init file -> tt-train file."""
import functools
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .checkpoint import Checkpoint
from .errors import InputFileError
from .hfconfig import model_shape
from .hub import resolve_model
from .mapping import build_plan, canonical_names
from .output import atomic_output
from .progress import Progress
from .training import LOAD_PREFIX, SAVE_PREFIX, reset_kind
from .ttbuild import BuiltFile, build_file
from .ttdir import is_checkpoint_dir
from .ttfile import TtFile, TtWriter, pack_int

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
    state: str = ""

    def summary(self):
        rate = self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0
        state = f"; {self.state}" if self.state else ""
        return (
            f"{self.tensors} tensors, {self.values:,} parameters, {self.bytes_written:,} bytes written "
            f"in {self.seconds:.2f} s ({rate:.0f} MB/s){state}"
        )


def plan_conversion(family, tt, ckpt, meta_style=False, params=None):
    """Build the plan (which tt tensor comes from which checkpoint tensors) for the model's
    parameters (params: another set of them, e.g. tt.weights())."""
    shape = model_shape(family, ckpt)
    layout = {"n_layers": shape.num_blocks}
    if family == "llama":
        layout.update(rope_q=shape.num_heads, rope_kv=shape.num_groups, head_dim=shape.head_dim)
    tensors = canonical_names(family, ckpt.tensors, ckpt.directory)
    return build_plan(family, tt, params or tt.parameters("model"), tensors, layout, meta_style)


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


def _emit(encoder, source, n_values, writer, progress, buffers):
    """Encode n_values with encoder(source, out) straight into the output's buffer when it lends one."""
    room = writer.reserve(n_values)
    encoded, bad = encoder(source, out=room if room is not None else buffers.encoded(n_values))
    if room is not None and np.shares_memory(encoded, room):
        writer.commit(n_values)
    else:
        writer.write(encoded)
    progress.advance(n_values * 5)
    return bad


def _encode_piece(piece, ckpt, writer, progress, buffers):
    info = piece.tensor
    if piece.transform == "transpose":
        size = info.rows * info.cols
        rows = ckpt.read_rows(info, buffer=buffers.source(size))
        return _emit(kernels.encode_transposed, rows, size, writer, progress, buffers)
    cols = info.matrix_shape()[1]
    unit = info.matrix_shape()[0] // piece.heads if piece.transform == "rope" else 1
    step = max(unit, (CHUNK_VALUES // max(cols, 1)) // unit * unit)
    nonfinite = 0
    for first in range(0, piece.rows, step):
        last = min(piece.rows, first + step)
        rows = ckpt.read_rows(info, first, last, buffers.source((last - first) * cols))
        if piece.transform == "rope":
            encoder = functools.partial(kernels.encode_rope, n_heads=(last - first) // unit)
        else:
            encoder = kernels.encode
        nonfinite += _emit(encoder, rows, rows.size, writer, progress, buffers)
    return nonfinite


def _write_zeros(count, writer, progress):
    chunk = ZERO_VALUE * min(count, ZERO_CHUNK_VALUES)
    while count:
        n = min(count, ZERO_CHUNK_VALUES)
        writer.write(chunk[: n * 5])
        progress.advance(n * 5)
        count -= n


def _renamer(old_prefix, new_prefix):
    """Key -> key under new_prefix for the model's keys (optimizer keys name bare parameters)."""
    if not new_prefix or new_prefix == old_prefix:
        return lambda key: key
    head = old_prefix + "/"
    return lambda key: new_prefix + key[len(old_prefix):] if key.startswith(head) else key


def write_converted(plan, tt, ckpt, out, progress, reset_state=True, prefix=None):
    """Stream the tt file with the plan's tensors replaced into out (model keys moved under prefix,
    when given; with reset_state, optimizer moments zeroed and step counters set to 0).
    Returns (NaN/Inf counts by key, {"moments": n, "counters": n} reset)."""
    writer = TtWriter(tt.open_source(), out)
    rename = _renamer(plan.prefix, prefix)
    buffers = _Buffers()
    nonfinite, reset = {}, {"moments": 0, "counters": 0}
    try:
        writer.begin()
        for entry in tt.entries:
            key = rename(entry.key)
            target = plan.targets.get(entry.key)
            action = reset_kind(entry) if reset_state and target is None else None
            if target is not None:
                writer.start_value(entry, target.n_values, key)
                bad = sum(_encode_piece(piece, ckpt, writer, progress, buffers) for piece in target.pieces)
                _write_zeros(target.pad_rows * target.param.cols, writer, progress)
                if bad:
                    nonfinite[entry.key] = bad
            elif action == "zeros":
                writer.zero_array(entry, entry.n_elements, key)
                reset["moments"] += 1
            elif action == "zero":
                writer.replace_value(entry, pack_int(0), key)
                reset["counters"] += 1
            else:
                writer.copy_entry(entry, key)
        writer.finish()
    finally:
        writer.close()
    return nonfinite, reset


def _open_source(family, init_path, ckpt, build, quiet):
    if init_path is None:
        return build_file(family, ckpt, **build)
    if is_checkpoint_dir(init_path):
        raise InputFileError(
            f"{init_path}: is a tt-train checkpoint directory; ttconv reads these (inspect, to-hf, check) but "
            "writes only msgpack files: give a msgpack init file or training save, or --no-init")
    size = os.path.getsize(init_path) if os.path.isfile(init_path) else 0
    with Progress(size, "reading init file", quiet) as progress:
        return TtFile(init_path, progress.advance)


def _state_notices(family, tt, plan, prefix, build):
    notices = []
    if isinstance(tt, BuiltFile):
        layout = (f" (zero AdamW moments, adamw/steps 0, scheduler {build['scheduler']} at learning rate "
                  f"{build['learning_rate']:g})" if build["layout"] == "training" else " (model only, as -s dumps it)")
        fc = next(t for key, t in plan.targets.items() if key.endswith("/fc/weight/value/data"))
        notices.append(f"no init file: building {plan.prefix} from config.json: layout {build['layout']}{layout}, "
                       f"vocabulary {fc.param.rows} rows (a multiple of {build['vocab_multiple']})")
    if tt.is_training_state() and family == "llama" and plan.prefix == SAVE_PREFIX["llama"] and not prefix:
        notices.append(
            f"{tt.path} is a training save: its model is under {plan.prefix}, where tt-train saves it, but "
            f"tt-train's training mode loads {LOAD_PREFIX['llama']}; add --prefix {LOAD_PREFIX['llama']} "
            "to resume training from the output"
        )
    return notices


def run_conversion(family, init_path, ckpt, output_path, meta_style=False, dry_run=False, quiet=True,
                   keep_optimizer_state=False, prefix=None, build=None):
    """Convert (or plan, with dry_run) one checkpoint into the tt file at init_path, or, when
    init_path is None, into a file built from the config (build: options of ttbuild.build_file).

    A training save keeps its optimizer and scheduler entries; unless keep_optimizer_state, the
    moments are zeroed and the step counters set to 0, since they belonged to the old weights.
    prefix moves the model's keys under another prefix."""
    started = time.perf_counter()
    build = build or {}
    tt = _open_source(family, init_path, ckpt, build, quiet)
    plan = plan_conversion(family, tt, ckpt, meta_style)
    report = Report(plan, output_path)
    report.tensors = len(plan.targets)
    report.values = sum(t.n_values for t in plan.targets.values())
    if dry_run:
        return report
    for notice in plan.notices + _state_notices(family, tt, plan, prefix, build):
        log.info(notice)
    inputs = ([init_path] if init_path else []) + sorted({t.path for t in ckpt.tensors.values()})
    with Progress(report.values * 5, "converting", quiet) as progress, atomic_output(output_path, inputs) as out:
        report.nonfinite, reset = write_converted(plan, tt, ckpt, out, progress, not keep_optimizer_state, prefix)
    if tt.is_training_state() and init_path is not None:
        report.state = ("optimizer and scheduler state kept as it was" if keep_optimizer_state else
                        f"optimizer and scheduler state reset ({reset['moments']} moment tensors zeroed, "
                        f"{reset['counters']} step counters set to 0)")
    if prefix and prefix != plan.prefix:
        report.state = ", ".join(filter(None, [report.state, f"model moved from {plan.prefix} to {prefix}"]))
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
