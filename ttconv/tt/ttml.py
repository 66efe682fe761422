"""tt-train's Python side (ttml): checkpoint streams and the SFT trainer's pickles, read safely.

`ttml.checkpointing` (format 1) writes one pickle `{"format": 1, "header": ..., "manifest": M}`
and then one numpy array per tensor, in the manifest's depth-first order (model, then
optimizer; never sorted). The SFT trainer's older files are one pickle `{"step": N,
"model_state": {name: array}}`. Both are read with unpickler.Unpickler (nothing is imported or
run); arrays stay in the file until their rows are asked for. Parameter names are ttml's
(ttml_names translates them, fused tensors split into the parts ttconv's mapping knows), so the
drivers see the same reader interface as for msgpack files and directories.
"""
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from .. import bf16
from ..errors import TtFileError
from . import ttml_names
from .rows import DecodedRows, RowGatherer, RunRows, ScratchBuffer
from .ttdir import DirParameter
from .unpickler import Array, Blob, ClassRef, Record, Unpickler, is_pickle, read_blob

FORMAT_VERSION = 1
RAW_DTYPES = {"float32": ("f32", 4), "bfloat16": ("bf16", 2)}  # stored as kernels.gather reads them
MASTER_WEIGHTS = "master_weights"


def is_ttml_file(path):
    """True when path is a file that opens with a pickle (protocol 2 to 5)."""
    try:
        with open(path, "rb") as handle:
            return is_pickle(handle.read(2))
    except OSError:
        return False


@dataclass(eq=False)
class TensorRecord:
    """One array of the file: its group ("model" or "optimizer"), manifest path, ttml name, the
    manifest's layout/dtype (None for an SFT pickle), the array and its record number."""

    group: str
    path: tuple
    name: str
    meta: object
    array: Array
    index: int

    @property
    def label(self):
        return f"{'/'.join((self.group,) + self.path)}[{self.name}]"

    @property
    def rows(self):
        return math.prod(self.array.shape[:-1])

    @property
    def cols(self):
        return self.array.shape[-1] if self.array.shape else 1


class TtmlTensor:
    """Rows of a record as ttconv's mapping sees one tensor: runs (first stored row, count), in order;
    columns: the stored columns in the tensor's order, for a one-row tensor of a fused linear's
    channels gathered from tensor parallelism (None: as stored)."""

    def __init__(self, key, record, runs, columns=None):
        self.key = key
        self.record = record
        self.runs = runs
        self.columns = columns
        self.rows = sum(count for _, count in runs)
        self.cols = record.cols

    @property
    def dims(self):
        return (self.rows, self.cols)


def plain(value, depth=0):
    """A header value as JSON-ready data: a Record becomes {"__class__": ..., fields}; arrays and
    data left in the file are described, not read."""
    if depth > 20:
        return "..."
    if isinstance(value, Record):
        out = {"__class__": str(value.cls)}
        if value.args:
            out["args"] = [plain(a, depth + 1) for a in value.args]
        out.update({k: plain(v, depth + 1) for k, v in value.fields.items()})
        return out
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, Array):
        return f"<array {list(value.shape)} {value.dtype_name}>"
    if isinstance(value, Blob):
        return f"<{value.size:,} bytes in the file>"
    if isinstance(value, ClassRef):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.generic):
        return value.item()
    return value


def _manifest_leaves(where, node, path):
    """(path, name, meta) of each tensor a manifest group holds, in stream order, and its scalars."""
    tensors, scalars = [], {}
    if not isinstance(node, dict):
        raise TtFileError(f"{where}: manifest entry {'/'.join(path) or '(root)'} is a {type(node).__name__}, "
                          "expected a dict")
    if "named_parameters" in node:
        named = node["named_parameters"]
        if not isinstance(named, dict) or not all(isinstance(k, str) for k in named):
            raise TtFileError(f"{where}: named_parameters of {'/'.join(path)} is not a dict of names")
        return [(path, name, meta) for name, meta in named.items()], scalars
    for key, sub in node.items():
        if isinstance(sub, dict):
            more, inner = _manifest_leaves(where, sub, path + (str(key),))
            tensors.extend(more)
            scalars.update(inner)
        elif isinstance(sub, (bool, int, float)):
            scalars["/".join(path + (str(key),))] = sub
        else:
            raise TtFileError(f"{where}: manifest value {'/'.join(path + (str(key),))} is a {type(sub).__name__}")
    return tensors, scalars


class TtmlFile:
    """A ttml checkpoint (format-1 stream or SFT pickle), indexed: every record's array located, none read.

    models: {root class name: Family} of the models it may hold (families.ttml_models()); tp: the
    tensor-parallel degree the file was gathered from (fused rows are rank-interleaved; the file
    does not record it)."""

    def __init__(self, path, models, tp=1):
        self.path = os.fspath(path)
        self.models = models
        self.tp = tp
        self.weights_note = None
        try:
            self.size = os.path.getsize(self.path)
            handle = open(self.path, "rb")
        except OSError as exc:
            raise TtFileError(f"{self.path}: cannot read: {exc.strerror}") from None
        with handle:
            reader = Unpickler(handle, self.path, self.size)
            first = reader.load()
            if isinstance(first, dict) and "format" in first:
                self._stream(reader, first)
            elif isinstance(first, dict) and "model_state" in first:
                self._sft(reader, first)
            else:
                what = (f"a dict with keys {sorted(map(str, first))[:6]}" if isinstance(first, dict)
                        else f"a {type(first).__name__}")
                raise TtFileError(f"{self.path}: a pickle whose first record is {what}: neither a "
                                  "ttml.checkpointing file (no 'format') nor an SFT trainer checkpoint "
                                  "(no 'model_state')")
        self._check_optimizer_shapes()
        self._build_parameters()

    # ---------------------------------------------------------------- reading the file

    def _stream(self, reader, first):
        version = first["format"]
        if version != FORMAT_VERSION:
            raise TtFileError(f"{self.path}: ttml.checkpointing format {version!r}; ttconv reads format "
                              f"{FORMAT_VERSION}")
        header, manifest = first.get("header"), first.get("manifest")
        self.kind = f"ttml.checkpointing format {FORMAT_VERSION}"
        self.header = header if isinstance(header, dict) else {}
        if not isinstance(manifest, dict):
            raise TtFileError(f"{self.path}: the manifest is a {type(manifest).__name__}, expected a dict")
        unknown = [str(k) for k in manifest if k not in ("model", "optimizer")]
        if unknown:
            raise TtFileError(f"{self.path}: manifest group {unknown[0]!r} (ttconv knows model and optimizer)")
        self.step = self.header.get("step")
        self.records, self.optimizer_scalars = [], {}
        self.groups = [g for g in ("model", "optimizer") if g in manifest]
        for group in self.groups:  # the order save_checkpoint streams them in
            leaves, scalars = _manifest_leaves(self.path, manifest[group], ())
            if group == "optimizer":
                self.optimizer_scalars = scalars
            for path, name, meta in leaves:
                if reader.at_end():
                    raise TtFileError(f"{self.path}: file ends after {len(self.records)} of the manifest's "
                                      f"{self._count(manifest)} tensors (truncated?)")
                index = len(self.records) + 1
                array = reader.load()
                record = TensorRecord(group, path, name, meta, array, index)
                self._check_array(record)
                self.records.append(record)
        if not reader.at_end():
            raise TtFileError(f"{self.path}: more records follow the {len(self.records)} tensors the manifest "
                              f"lists (from byte {reader.tell():,})")

    def _count(self, manifest):
        return sum(len(_manifest_leaves(self.path, manifest[g], ())[0]) for g in self.groups)

    def _sft(self, reader, first):
        self.kind = "SFT trainer pickle"
        self.header = {k: v for k, v in first.items() if k != "model_state"}
        self.step = first.get("step")
        self.groups, self.optimizer_scalars = ["model"], {}
        state = first["model_state"]
        if not isinstance(state, dict):
            raise TtFileError(f"{self.path}: model_state is a {type(state).__name__}, expected a dict of arrays")
        self.records = []
        for name, array in state.items():
            record = TensorRecord("model", (), str(name), None, array, 0)
            self._check_array(record)
            self.records.append(record)
        if not reader.at_end():
            raise TtFileError(f"{self.path}: data follows the SFT checkpoint's pickle (at byte {reader.tell():,})")

    def _check_array(self, record):
        array = record.array
        if not isinstance(array, Array):
            where = f"record {record.index}" if record.index else "model_state"
            raise TtFileError(f"{self.path}: {where} ({record.label}) is a {type(array).__name__}, expected a numpy "
                              "array")
        if array.dtype.kind not in "f" and not array.bfloat16:
            raise TtFileError(f"{self.path}: {record.label} holds {array.dtype_name} values; tt-train saves float32 "
                              "or bfloat16")
        if not array.shape or 0 in array.shape:
            raise TtFileError(f"{self.path}: {record.label} is an empty array of shape {list(array.shape)}")

    def _check_optimizer_shapes(self):
        model = {r.name: r.array.shape for r in self.records if r.group == "model"}
        for record in self.records:
            if record.group == "optimizer" and record.name in model and record.array.shape != model[record.name]:
                raise TtFileError(f"{self.path}: {record.label} has shape {list(record.array.shape)} but its parameter "
                                  f"has {list(model[record.name])} (truncated optimizer state)")

    # ---------------------------------------------------------------- names and parts

    def _build_parameters(self):
        model = [r for r in self.records if r.group == "model"]
        if not model:
            raise TtFileError(f"{self.path}: holds no model parameters")
        self.root, self.family, self._wrapper = ttml_names.model_root(self.path, [r.name for r in model],
                                                                         self.models)
        by_name = {self._local(r.name): r for r in model}
        self.fused_linears = sorted({_fused_label(n) for n in by_name if n == ttml_names.base_name(n)
                                     and ttml_names.translate(self.path, self.family, n)[0] not in ("", "stacked")})
        self._model = self._canonical(model, by_name)
        masters = [r for r in self.records if r.group == "optimizer" and r.path and r.path[-1] == MASTER_WEIGHTS]
        self._masters = self._canonical(masters, by_name) if masters else {}

    @property
    def fused(self):
        """True when the model has fused tensors (rank-interleaved under tensor parallelism)."""
        return bool(self.fused_linears)

    def _local(self, name):
        if not name.startswith(self._wrapper):
            raise TtFileError(f"{self.path}: {name!r} is not under {self._wrapper} like the model's other parameters")
        return ttml_names.local_name(self.root, self._wrapper, name)

    def _canonical(self, records, model_by_name):
        """Parameters under their canonical names: a fused record gives one per part (an adapter's
        lora_B the parts of its weight's rows, its lora_A whole to each)."""
        params = {}
        for record in records:
            name = self._local(record.name)
            base = ttml_names.base_name(name)
            adapter = name[len(base) - len("weight"):] if base != name else None
            fused, targets = ttml_names.translate(self.path, self.family, base)
            if fused == "stacked":
                params.update(self._experts(record, name, targets[0][0], model_by_name))
                continue
            weight = model_by_name.get(base, record)
            # a fused linear's per-channel vector (one row) holds its parts along the columns
            along_columns = fused != "" and weight.rows == 1
            sizes = self._part_sizes(base, weight.cols if along_columns else weight.rows, fused, model_by_name)
            for canonical, picked in targets:
                label = record.label if record.group == "optimizer" else record.name
                key = label if len(targets) == 1 else f"{label}[{'+'.join(picked)}]"
                columns = None
                if along_columns:
                    runs = [(0, 1)]
                    columns = np.concatenate([np.arange(first, first + count)
                                              for first, count in self._runs(record, sizes, picked, "channels")])
                else:
                    runs = [(0, record.rows)] if adapter == "lora_A" else self._runs(record, sizes, picked)
                if adapter:
                    canonical = canonical[:-len("weight")] + adapter
                params[canonical] = DirParameter(canonical, TtmlTensor(key, record, runs, columns))
        for one, other in (ttml_names.EMBEDDINGS, ttml_names.EMBEDDINGS[::-1]):
            one, other = f"{self.root}/{one}", f"{self.root}/{other}"
            if one in params and other not in params:  # tied: one parameter saved under either name
                params[other] = DirParameter(other, params[one].data)
        return params

    def _experts(self, record, name, template, model_by_name):
        """The experts an expert-parallel record holds, by canonical name: slice r of its D is expert
        r * E_local + j (j: its own index; E_local: how many records of its kind its layer has)."""
        stem, _, j = name.rpartition("_")
        local = sum(1 for other in model_by_name if other.rpartition("_")[0] == stem)
        devices = record.array.shape[0] if len(record.array.shape) == 4 else 0
        if devices < 1 or record.rows % devices or not j.isdigit() or int(j) >= local:
            raise TtFileError(f"{self.path}: {record.name} of shape {list(record.array.shape)} is not an "
                              f"expert-parallel stack (D, 1, rows, cols) of expert {j} of {local} per device")
        rows = record.rows // devices
        experts = {}
        for r in range(devices):
            canonical = template.format(e=r * local + int(j))
            experts[canonical] = DirParameter(canonical, TtmlTensor(f"{record.name}[{r}]", record, [(r * rows, rows)]))
        return experts

    def _part_sizes(self, name, rows, fused, model_by_name):
        """{part: rows} of a fused tensor of that many rows (before tensor parallelism interleaves them)."""
        if fused == "":
            return {"all": rows}
        sizes = self.family.ttml_fused_sizes(self.path, name, fused, rows, model_by_name)
        if sizes is not None:
            return sizes
        if fused == "qkv":  # as many query rows as the output projection has columns
            return ttml_names.qkv_sizes(self.path, name, rows, model_by_name,
                                        name.rsplit("/", 2)[0] + "/out_linear/weight", "q", lambda r: r.cols)
        first, second = ttml_names.FUSIONS[fused]
        if rows % 2:
            raise TtFileError(f"{self.path}: {name} is a fused {first}|{second} linear of {rows} rows, "
                              "which do not split in halves")
        return {first: rows // 2, second: rows // 2}

    def _runs(self, record, sizes, picked, unit="rows"):
        """Stored row runs of the picked parts, every rank's slice of a part in turn."""
        parts = list(sizes)
        if parts == ["all"]:
            return [(0, record.rows)]
        tp = self.tp
        bad = [p for p in parts if sizes[p] % tp]
        if bad:
            raise TtFileError(f"{self.path}: {record.name}: its {bad[0]} {unit} ({sizes[bad[0]]}) do not split "
                              f"{tp} ways; is --tp {tp} right?")
        block = sum(sizes.values()) // tp
        offsets, at = {}, 0
        for part in parts:
            offsets[part] = at
            at += sizes[part] // tp
        return [(rank * block + offsets[part], sizes[part] // tp) for part in picked for rank in range(tp)]

    # ---------------------------------------------------------------- the reader interface

    def parameters(self, group=None):
        """Model parameters under their canonical names (group "model" or None); {} for "optimizer"."""
        return dict(self._model) if group in (None, "model") else {}

    def weights(self):
        """The model's parameters as training last updated them: AdamWFullPrecision's float32 master
        weights stand in for the bf16 weights they belong to (weights_note then says so)."""
        params = dict(self._model)
        used = 0
        for name, master in self._masters.items():
            if name in params:
                params[name] = master
                used += 1
        if used:
            self.weights_note = (f"full-precision master weights exported for {used} of {len(params)} tensors (what "
                                 "training updates; the bf16 model copy is derived)")
        return params

    def stores_bfloat16(self, params):
        """True when every one of params is held as bfloat16."""
        return all(p.data.record.array.bfloat16 for p in params.values())

    def is_training_state(self):
        """True when the file holds optimizer state beside the model."""
        return "optimizer" in self.groups

    def _raw(self, record):
        """(source dtype name, width) when the record's bytes can be read as rows straight from the file."""
        array = record.array
        if isinstance(array.data, Blob) and not array.data.latin1 and not array.fortran:
            return RAW_DTYPES.get(array.dtype_name) if array.dtype.byteorder in "<=|" else None
        return None

    def _decoded(self, record):
        """The whole record as float32 [rows, cols] (one tensor in memory)."""
        array = record.array
        if isinstance(array.data, Blob):
            with open(self.path, "rb") as handle:
                data = read_blob(handle, self.path, array.data)
        else:
            data = array.data
        if len(data) != array.nbytes:
            raise TtFileError(f"{self.path}: {record.label} declares {array.nbytes:,} bytes of data but holds "
                              f"{len(data):,}")
        values = np.frombuffer(data, dtype=array.dtype)
        values = (bf16.widen(values) if array.bfloat16 else values).reshape(array.shape, order="F" if array.fortran else "C")
        return np.ascontiguousarray(values, dtype=np.float32).reshape(record.rows, record.cols)

    def read_values(self, data):
        """A tensor's values (its runs of rows, its columns in order: row_source) as a flat float32 array."""
        rows = RowGatherer(self, DirParameter(data.key, data), ScratchBuffer())
        try:
            return rows.float32_rows(0, data.rows).reshape(-1)
        finally:
            rows.close()

    def row_source(self, param, scratch):
        """Row access (tt.rows) to a parameter: its stored rows straight from the file where they are
        raw float32 or bfloat16 in their stored column order, else the record decoded whole."""
        data = param.data
        raw = self._raw(data.record)
        if raw is None or data.columns is not None:
            return self.decoded_rows(param)
        name, width = raw
        return RunRows(self.path, data.record.array.data.offset, data.runs, data.cols, width, name, scratch)

    def decoded_rows(self, param):
        """The parameter's values decoded whole to float32, as a row source."""
        data = param.data
        decoded = self._decoded(data.record)
        if data.columns is not None:
            decoded = decoded[:, data.columns]
        return DecodedRows(np.concatenate([decoded[first:first + count] for first, count in data.runs]), data.cols)

    # ---------------------------------------------------------------- the header

    def model_config(self):
        """The header's model_config as a flat dict, or None: its spec's fields beside the common ones, and
        those of a record within the spec (DeepSeek's moe_hyperparam: MoEParams) beside the spec's."""
        fields = _record_fields(self.header.get("model_config"))
        if fields is None:
            return None
        spec = _record_fields(fields.pop("spec", None)) or {}
        for key, value in list(spec.items()):
            inner = _record_fields(value)
            if inner is not None:
                del spec[key]
                spec.update(inner)
        fields.update(spec)
        return {key: _enum_value(value) for key, value in fields.items()}

    def tokenizer(self):
        """The header's character tokenizer's {token: id} (its stoi), or None."""
        tok = self.header.get("tokenizer")
        fields = tok.fields if isinstance(tok, Record) else tok if isinstance(tok, dict) else None
        stoi = fields.get("stoi") if fields else None
        return stoi if isinstance(stoi, dict) else None


def _record_fields(value):
    """A header record's (or a dict's) fields as a new dict, None for anything else."""
    if isinstance(value, Record):
        return dict(value.fields)
    return dict(value) if isinstance(value, dict) else None


def _fused_label(name):
    """What inspect calls a fused tensor: its linear (…/qkv_linear/weight), or its own name with a
    trailing index as J (…/conv_tap_0: conv_tap_J)."""
    if name.endswith("/weight"):
        return name.split("/")[-2]
    return re.sub(r"\d+$", "J", name.rsplit("/", 1)[-1])


def _enum_value(value):
    """An enum member as its member name where the pickle names it, else its value."""
    if isinstance(value, Record) and len(value.args) == 1:
        return value.args[0]
    if isinstance(value, ClassRef):
        return value.name.rsplit(".", 1)[-1]
    return value
