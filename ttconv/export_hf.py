"""`ttconv to-hf`: a Hugging Face checkpoint folder from a tt-train file or directory, streamed.

The conversion plan that maps the original checkpoint onto the tt file is built as for a
forward conversion, then every step is undone, a chunk of rows at a time, straight from the tt
file's stored words into the output's write buffers (kernels.gather: untilize, RoPE
de-interleave of q/k rows and Qwen3's q/k norm vectors, Conv1D transposes, the k/v split,
vocabulary crop and rounding in one pass). Tied tensors are written once. Tensors the tt file
does not hold (buffers, positions beyond the tt context) come from the original checkpoint.
Every output shape follows from the plan, so each safetensors header is written before its data
and the folder is split into shards as save_pretrained splits it.
"""
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import families, kernels
from .conversion import Report, plan_conversion
from .errors import MappingError, OutputError, TtconvError
from .export_lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, write_adapter
from .hf.checkpoint import INDEX_NAME, ITEM_SIZES, SINGLE_NAME, Checkpoint
from .hf.from_header import ConfigCheckpoint, apply_overrides
from .hf.hub import resolve_model
from .hf.safetensors_out import OutTensor, parse_size, write_weights
from .hf.tokenizer import char_tokenizer_json, tokenizer_files
from .mapping import find_prefix, rope_order
from .options import EXPORT_DTYPES
from .output import atomic_directory
from .progress import Progress
from .tt.formats import open_tt, weights_in_bfloat16
from .tt.lora import lora_setup, merged_reader, refuse_lora_options, without_adapters
from .tt.rows import RowGatherer, ScratchBuffer
from .tt.ttml import TtmlFile

OUTPUT_DTYPES = {"f32": "F32", "bf16": "BF16", "f16": "F16"}  # --dtype -> safetensors dtype
CONFIG_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
# safetensors dtypes kernels.gather reads (others are copied as they are)
GATHER_DTYPES = {"F32": ("f32", np.float32), "F16": ("f16", np.float16), "BF16": ("bf16", np.uint16)}
TRANSPOSE_ROWS = 64  # a transpose's chunks are whole runs of 64 rows: the kernel's fast path


@dataclass
class Part:
    """Rows [row, row + rows) of an output tensor's matrix from rows first.. of a tt parameter
    (transform: copy, rope, rope_columns, transpose, or offset: the values minus one), or, with
    original, the next `rows` values of the output from values [first, first + rows) of the original
    checkpoint's tensor (flat); or (transform column) its column `column` from the tt parameter's one
    row, all of an output's column parts written together."""

    row: int
    rows: int
    first: int = 0
    param: object = None
    transform: str = "copy"
    heads: int = 0
    original: object = None
    column: int = 0


@dataclass
class Export:
    """One output tensor: what is written (OutTensor), its original (TensorInfo) and its parts."""

    out: OutTensor
    info: object
    parts: list

    @property
    def matrix(self):
        """(rows, cols) the parts count in: the tt view for tt tensors, flat values for originals."""
        if self.parts[0].original is not None and len(self.parts) == 1:
            return 1, math.prod(self.info.shape)
        return self.info.matrix_shape()


def _exports(family, plan, ckpt, out_dtype):
    """Every output tensor, in Hugging Face's order: each checkpoint tensor the tt file holds
    (once, tok_emb before fc so a tied source takes the embedding), the rest from the original."""
    order = sorted(plan.targets.values(), key=lambda t: t.param.name.endswith("/fc/weight"))
    exports = {}
    for target in order:
        row = 0
        for piece in target.pieces:
            first, row = row, row + piece.rows
            info = piece.tensor
            rows, cols = info.matrix_shape()
            if piece.transform == "column":  # one column each of several tt tensors: gathered, then written whole
                exports.setdefault(info.name, Export(OutTensor(info.name, OUTPUT_DTYPES[out_dtype], info.shape), info,
                                                     [])).parts.append(Part(0, rows, 0, target.param, "column",
                                                                            column=piece.column))
                continue
            if info.name in exports:
                continue  # tied: written once
            if piece.transform == "transpose":
                parts = [Part(0, rows, first, target.param, "transpose")]
            else:
                parts = [Part(0, piece.rows, first, target.param, piece.transform, piece.heads)]
                if piece.rows < rows:  # the tt context is shorter: the positions after it are the original's
                    parts.append(Part(piece.rows, (rows - piece.rows) * cols, piece.rows * cols, original=info))
            exports[info.name] = Export(OutTensor(info.name, OUTPUT_DTYPES[out_dtype], info.shape), info, parts)
    for info in ckpt.tensors.values():
        if info.name not in exports:
            dtype = OUTPUT_DTYPES[out_dtype] if info.dtype in GATHER_DTYPES else info.dtype
            values = math.prod(info.shape)
            exports[info.name] = Export(OutTensor(info.name, dtype, info.shape), info,
                                        [Part(0, values, 0, original=info)])
    return [exports[name] for name in sorted(exports, key=family.hf_order_key)]


class _Streamer:
    """Writes the exports' bytes through a file's sink, a chunk of rows at a time, straight into the
    output's write buffers (only the unit of rows that straddles two buffers goes through a copy)."""

    def __init__(self, tt, ckpt, out_dtype, progress):
        self._tt = tt
        self._ckpt = ckpt
        self._out_dtype = out_dtype
        self._width = kernels.GATHER_OUT[out_dtype][1]
        self._progress = progress
        self._input = ScratchBuffer()
        self._output = ScratchBuffer()

    def __call__(self, tensor, sink):
        export = self._by_name[tensor.name]
        rows, cols = export.matrix
        if export.parts[0].transform == "column":
            matrix = np.zeros((rows, cols), dtype=np.float32)
            for part in export.parts:
                matrix[:, part.column] = self._float32(part.param)[0]
            self._write_values(matrix, sink)
            return
        for part in export.parts:
            if part.original is not None:
                self._original(part, export.out, sink)
            elif part.transform == "offset":  # a small vector: decoded, one taken off, written
                self._write_values(self._float32(part.param)[part.first:part.first + part.rows] - np.float32(1), sink)
            else:
                self._tt_part(part, cols, sink)

    def _float32(self, param):
        return self._tt.read_values(param.data).reshape(param.rows, param.cols)

    def _write_values(self, matrix, sink):
        """float32 [rows, cols] values in the output dtype (rounded as the kernel rounds)."""
        rows, cols = matrix.shape
        out = self._output.take(rows * cols * self._width)
        kernels.gather(np.ascontiguousarray(matrix).reshape(-1), "f32", cols, np.arange(rows, dtype=np.uint32), out,
                       self._out_dtype, cols=cols)
        sink.write(out)
        self._progress.advance(out.size)

    def run(self, exports, directory, max_shard_size):
        self._by_name = {e.out.name: e for e in exports}
        return write_weights(directory, [e.out for e in exports], max_shard_size, self)

    def _chunks(self, sink, n_rows, row_bytes, unit, fill):
        """fill(first, count, out) for consecutive rows covering n_rows (count a multiple of unit)."""
        done = 0
        while done < n_rows:
            fit = sink.room() // row_bytes // unit * unit
            if fit:
                count = min(fit, n_rows - done)
                fill(done, count, sink.reserve(count * row_bytes))
                sink.commit(count * row_bytes)
            else:  # the buffer being filled has less room than a unit of rows: they straddle two buffers
                count = min(unit, n_rows - done)
                out = self._output.take(count * row_bytes)
                fill(done, count, out)
                sink.write(out)
            done += count
            self._progress.advance(count * row_bytes)

    def _tt_part(self, part, cols, sink):
        param, out_dtype = part.param, self._out_dtype
        rows = RowGatherer(self._tt, param, self._input)
        try:
            if part.transform == "transpose":
                # output row k is tt column k: the whole tt matrix is read once, then gathered a chunk at a time
                self._chunks(sink, part.rows, cols * self._width, TRANSPOSE_ROWS, lambda first, count, out: rows.gather(
                    0, param.rows, np.arange(first, first + count, dtype=np.uint32), out, out_dtype, cols=cols,
                    transposed=True))
            elif part.transform == "rope_columns":  # a q/k norm vector: one row, its head_dim values interleaved
                self._chunks(sink, 1, cols * self._width, 1, lambda first, count, out: rows.gather(
                    part.first, 1, np.zeros(1, dtype=np.uint32), out, out_dtype, columns=rope_order(0, cols, cols)))
            else:
                head_dim = part.rows // part.heads if part.transform == "rope" else 1

                def fill(first, count, out):
                    if head_dim == 1:
                        rows.gather(part.first + first, count, np.arange(count, dtype=np.uint32), out, out_dtype,
                                    cols=cols)
                        return
                    # the rows of the whole heads these rows lie in, de-interleaved
                    start = first // head_dim * head_dim
                    stop = -(-(first + count) // head_dim) * head_dim
                    picked = rope_order(first, first + count, head_dim) - start
                    rows.gather(part.first + start, stop - start, picked, out, out_dtype, cols=cols)

                self._chunks(sink, part.rows, cols * self._width, 1, fill)
        finally:
            rows.close()

    def _original(self, part, out, sink):
        info, ckpt = part.original, self._ckpt
        in_width = ITEM_SIZES[info.dtype]
        if info.dtype in GATHER_DTYPES and out.dtype != info.dtype:
            name, raw_dtype = GATHER_DTYPES[info.dtype]

            def fill(first, count, buffer):
                raw = ckpt.read_bytes(info, (part.first + first) * in_width, self._input.take(count * in_width))
                kernels.gather(raw.view(raw_dtype), name, count, np.zeros(1, dtype=np.uint32), buffer,
                               self._out_dtype, cols=count)

            self._chunks(sink, part.rows, self._width, 1, fill)
        else:  # the same dtype (or one ttconv does not convert): the bytes as they are
            self._chunks(sink, part.rows, in_width, 1, lambda first, count, buffer: ckpt.read_bytes(
                info, (part.first + first) * in_width, buffer))


def is_hf_folder(path):
    """A folder an export may replace: empty, a Hugging Face checkpoint (config.json and weights) or a
    PEFT adapter folder."""
    names = set(os.listdir(path))
    return (not names or ("config.json" in names and bool(names & {SINGLE_NAME, INDEX_NAME}))
            or {ADAPTER_CONFIG, ADAPTER_WEIGHTS} <= names)


def _config(config, dtype, overrides):
    config = apply_overrides(config, overrides)
    for key in ("torch_dtype", "dtype"):
        if key in config:
            config[key] = CONFIG_DTYPES[dtype]
    if "dtype" not in config:
        config["torch_dtype"] = CONFIG_DTYPES[dtype]
    return (json.dumps(config, indent=2) + "\n").encode("utf-8")


def _header_checkpoint(family, tt, tt_path):
    """A ConfigCheckpoint from the header of a ttml file (its model_config) and its tensors' shapes."""
    fields = tt.model_config() if isinstance(tt, TtmlFile) else None
    if fields is None:
        what = "its header has no model_config" if isinstance(tt, TtmlFile) else "only ttml checkpoints carry a model config"
        raise TtconvError(f"{tt_path}: {what}; give --hf_model, the checkpoint it was trained from")
    declared = fields.get("model_type")
    if declared not in (None, family.name):
        raise MappingError(f"{tt_path}: the header's model_type is {declared!r}; use 'ttconv to-hf {declared}'")
    params = without_adapters(tt.weights())
    prefix = find_prefix(params, family, tt_path, families.ALL)
    tok, fc = params.get(f"{prefix}/tok_emb/weight"), params[f"{prefix}/fc/weight"]
    sizes = dict(family.header_sizes(params, f"{prefix}/{family.block_0}"), vocab_rows=fc.rows)
    where = f"{tt_path} (header)"
    config = family.hf_config(fields, tok is None or tok.data is fc.data, sizes, where)
    return ConfigCheckpoint(config, family.hf_shapes(config), where, family.header_zeros)


def _inputs(tt, tt_path, ckpt):
    originals = sorted({i.path for i in ckpt.tensors.values() if i.path})
    return [getattr(tt, "directory", tt_path), tt_path] + ([ckpt.directory] if ckpt.directory else []) + originals


def _export(options, tt, ckpt, shard_bytes):
    """The export itself: (plan, dtype written, exports, {file: tensors})."""
    family, tt_path, dtype = options.family, options.tt_path, options.dtype
    params = without_adapters(tt.weights())
    plan = plan_conversion(family, tt, ckpt, options.meta_style, params)
    if plan.unused and isinstance(getattr(tt, "reader", tt), TtmlFile):
        # the other formats are filled from a model the original matches; a ttml file is the whole model
        more = f" and {len(plan.unused) - 1} more" if len(plan.unused) > 1 else ""
        raise MappingError(f"{tt_path}: holds nothing for {plan.unused[0]}{more}; a tt-train Python-side checkpoint "
                           "must hold every tensor of the model")
    if dtype == "auto":
        dtype = "bf16" if weights_in_bfloat16(tt, params) else "f32"
    exports = _exports(family, plan, ckpt, dtype)
    total = sum(e.out.nbytes for e in exports)
    with atomic_directory(options.output_dir, _inputs(tt, tt_path, ckpt), is_hf_folder,
                          "a Hugging Face checkpoint") as out, \
            Progress(total, "writing safetensors", options.quiet) as progress:
        files = _Streamer(tt, ckpt, dtype, progress).run(exports, out, shard_bytes)
        with out.file("config.json") as config:
            config.write(_config(ckpt.config, dtype, options.overrides))
        if ckpt.directory:
            for source, name in tokenizer_files(ckpt.directory):
                out.copy(source, name)
        elif isinstance(getattr(tt, "reader", tt), TtmlFile) and tt.tokenizer() is not None:
            with out.file("tokenizer.json") as tokenizer:
                tokenizer.write(char_tokenizer_json(tt.tokenizer()).encode("utf-8"))
    return plan, dtype, exports, files


def _export_adapter(options, tt, ckpt, lora, started):
    """A PEFT adapter folder of a LoRA checkpoint; returns the Report."""
    family, output_dir = options.family, options.output_dir
    adapters, alpha, rslora = lora
    base_model = None if options.hf_model is None else str(options.hf_model)
    params = without_adapters(tt.weights())
    plan = plan_conversion(family, tt, ckpt, options.meta_style, params)
    with atomic_directory(output_dir, _inputs(tt, options.tt_path, ckpt), is_hf_folder, "a PEFT adapter") as out:
        tensors, values, nbytes, dtype = write_adapter(out, family, tt, adapters, plan, alpha, rslora, base_model,
                                                       list(ckpt.tensors), options.dtype)
    ranks = sorted({a.rank for a in adapters.values()})
    state = (f"PEFT LoRA adapter for {tensors // 2} projections, rank "
             f"{', '.join(map(str, ranks))}, lora_alpha {alpha:g}{', rsLoRA' if rslora else ''}, {dtype}")
    return Report(plan, output_dir, tensors=tensors, values=values, bytes_written=nbytes,
                  seconds=time.perf_counter() - started, state=state)


def export_hf(options):
    """Write a Hugging Face checkpoint folder (safetensors weights, config.json, tokenizer files and
    generation config) for a tt-train file or checkpoint directory, atomically (options: an
    ExportOptions).

    The original checkpoint (hf_model, folder or hub id) supplies the config, the tensor names and
    layout, and any tensor the tt file does not hold. dtype "auto" writes the tt file's own precision
    (bfloat16 for a directory as tt-train saves it, float32 for msgpack or full-precision master
    weights); "f32", "bf16", "f16" round to nearest even. Weights larger than max_shard_size ("5GB",
    "500MB", bytes) are split into model-0000K-of-0000N.safetensors with model.safetensors.index.json.
    A ttml (Python-side) checkpoint needs no hf_model (None): config.json is built from its header's
    model_config, and a character tokenizer it holds becomes tokenizer.json; tp is the tensor-parallel
    degree it was gathered from. overrides: "KEY=VALUE" strings set in the written config.json.
    A LoRA checkpoint is written as a PEFT adapter folder (adapter_config.json with lora_alpha,
    use_rslora; adapter_model.safetensors), or, with merge_lora, as the full checkpoint with every
    adapted weight W + scale B A (scale lora_alpha / r, or / sqrt(r) with rslora). Returns a Report.
    """
    started = time.perf_counter()
    tt_path, hf_model, output_dir = options.tt_path, options.hf_model, options.output_dir
    if options.dtype not in EXPORT_DTYPES:
        raise TtconvError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, not {options.dtype!r}")
    shard_bytes = parse_size(options.max_shard_size)
    apply_overrides({}, options.overrides)  # a malformed --set is refused before any work
    original = None
    if hf_model is not None:
        model_dir = resolve_model(hf_model, options.revision)
        if os.path.isdir(output_dir) and os.path.samefile(output_dir, model_dir):
            raise OutputError(f"{output_dir}: is the original checkpoint folder; choose another output folder")
        original = Checkpoint(model_dir)
    # every value is checked as it is gathered
    tt = open_tt(tt_path, families.ttml_models(), assume_float32=True, tp=options.tp,
                 base=(lambda: options.family.model_tensors(original)) if original else None)
    lora = lora_setup(tt, options.lora_alpha, options.rslora)
    if not lora[0]:
        refuse_lora_options(tt_path, options.merge_lora, options.lora_alpha, options.rslora)
    ckpt = original or _header_checkpoint(options.family, tt, tt_path)
    if lora[0] and options.merge_lora:
        tt = merged_reader(tt, *lora)
    try:
        if lora[0] and not options.merge_lora:
            return _export_adapter(options, tt, ckpt, lora, started)
        plan, dtype, exports, files = _export(options, tt, ckpt, shard_bytes)
    finally:
        ckpt.close()
    where = f"{len(files)} safetensors shards" if len(files) > 1 else "one safetensors file"
    state = "; ".join(filter(None, [f"{CONFIG_DTYPES[dtype]}, {where}", tt.weights_note]))
    values = sum(math.prod(e.out.shape) for e in exports)
    return Report(plan, output_dir, tensors=len(exports), values=values, bytes_written=sum(e.out.nbytes for e in exports),
                  seconds=time.perf_counter() - started, state=state)
