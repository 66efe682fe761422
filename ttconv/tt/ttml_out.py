"""ttml checkpoints written without tt-train: the way into tt-train's Python side for a family it
has no Hugging Face loader for (DeepSeek).

build_ttml describes the file from the checkpoint's config: the family's ttml records (a name
under its root, the 4-D shape ttml holds, and the canonical parameters whose rows fill it, one, or
one per slice of an expert-parallel stack), the header (step 0, no tokenizer, the family's
model_config) and, for the "training" layout, AdamW's zero moments. The conversion fills it
through ttml_output's writer like any other format's: the file is ttml.checkpointing's format 1,
record 0 the header and manifest, then one array pickle per tensor in manifest order, each
written as it streams (pickle_out), so memory stays at one chunk of rows whatever the model size.
"""
import contextlib
from dataclasses import dataclass

import numpy as np

from .. import bf16, kernels
from ..errors import TtconvError
from ..output import atomic_output
from . import pickle_out
from .ttdir import DirParameter

FORMAT_VERSION = 1
DTYPES = {"bf16": "BFLOAT16", "f32": "FLOAT32"}
LAYOUTS = ("model", "training")
MOMENTS = ("exp_avg", "exp_avg_sq")  # AdamW's, bfloat16 as ttml keeps them
CHUNK_VALUES = 1 << 18
SOURCE_DTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}


@dataclass(frozen=True)
class TtmlRecord:
    """One array of the file: its manifest group and path, its name, 4-D shape and dtype name."""

    group: str
    path: tuple
    name: str
    shape: tuple
    kind: str


@dataclass(eq=False)
class Slot:
    """A run of a record's rows that one entry fills: a canonical parameter's rows (or a whole moment)."""

    key: str
    record: TtmlRecord
    rows: int
    cols: int
    first: bool
    last: bool

    @property
    def dims(self):
        return (self.rows, self.cols)

    @property
    def group(self):
        return self.record.group

    @property
    def n_values(self):
        return self.rows * self.cols


class BuiltTtml:
    """A ttml checkpoint described in memory (see the module docstring) for a model of shape (a
    ModelShape); entries are its slots in order."""

    weights_note = None

    def __init__(self, path, shape, header, records, learning_rate):
        self.path = path
        self.shape = shape
        self.header = header
        self.records = records
        self.entries = []
        self._params = {}
        self._learning_rate = learning_rate

    def add(self, record, parts):
        """Add a record filled by parts [(canonical name or key, rows)] in order."""
        cols = record.shape[-1]
        for n, (key, rows) in enumerate(parts):
            slot = Slot(key, record, rows, cols, n == 0, n == len(parts) - 1)
            self.entries.append(slot)
            if record.group == "model":
                self._params[key] = DirParameter(key, slot)

    def parameters(self, group="model"):
        """The model's parameters under their canonical names; {} for "optimizer"."""
        return dict(self._params) if group in (None, "model") else {}

    def is_training_state(self):
        return any(r.group == "optimizer" for r in self.records)

    def manifest(self):
        """Record 0's manifest: each group's named_parameters (layout, dtype), AdamW's scalars beside its moments."""
        manifest = {}
        for record in self.records:
            group = manifest.setdefault(record.group, {})
            if record.group == "optimizer" and not group:
                group.update(steps=0, lr=float(self._learning_rate), amsgrad=False)
            for part in record.path:
                group = group.setdefault(part, {})
            group.setdefault("named_parameters", {})[record.name] = {"layout": "TILE", "dtype": record.kind}
        return manifest


def build_ttml(family, ckpt, dtype="bf16", layout="model", tp=1, ep=None, learning_rate=1e-4,
               max_sequence_length=None, allow_lossy=False):
    """A BuiltTtml for the checkpoint's config (family: a Family with ttml_records): the model in dtype
    ("bf16" or "f32"), the vocabulary padded to lcm(32, tp) rows, experts as ep-way expert-parallel stacks
    (None: a module per expert); layout "training" adds AdamW's zero moments at learning_rate;
    allow_lossy: what tt-train computes otherwise is warned of, not refused (Family.ttml_shape)."""
    if dtype not in DTYPES:
        raise TtconvError(f"--dtype {dtype}: a ttml checkpoint holds bf16 or f32")
    if layout not in LAYOUTS:
        raise TtconvError(f"--layout {layout}: choose one of {', '.join(LAYOUTS)}")
    shape = family.ttml_shape(ckpt, allow_lossy)
    vocab_rows = shape.tt_vocab(32 * tp // np.gcd(32, tp))
    root = family.ttml_root
    kind = DTYPES[dtype]
    model = [(name, dims, parts) for name, dims, parts in family.ttml_records(shape, vocab_rows, ep)]
    records = [TtmlRecord("model", (), f"{root}/{name}", tuple(dims), kind) for name, dims, _ in model]
    if layout == "training":
        records += [TtmlRecord("optimizer", (moment,), r.name, r.shape, "BFLOAT16") for moment in MOMENTS
                    for r in records[:len(model)]]
    header = {"step": 0, "tokenizer": None,
              "model_config": family.ttml_model_config(ckpt, shape, ep, max_sequence_length)}
    built = BuiltTtml(f"{ckpt.directory}/config.json", shape, header, records, learning_rate)
    for record, (_, dims, parts) in zip(records, model):
        rows = int(np.prod(dims[:-1])) // len(parts)
        built.add(record, [(f"{root}/{part}", rows) for part in parts])
    for record in records[len(model):]:
        built.add(record, [(f"optimizer/{record.path[0]}[{record.name}]", int(np.prod(record.shape[:-1])))])
    return built


class TtmlWriter:
    """Writes a BuiltTtml filled by the conversion (the interface conversion.write_converted drives)."""

    def __init__(self, built, out):
        self._built = built
        self._out = out
        self._zeros = np.zeros(CHUNK_VALUES * 4, dtype=np.uint8)
        self._buffer = np.empty(CHUNK_VALUES * 4, dtype=np.uint8)

    def begin(self):
        record0 = {"format": FORMAT_VERSION, "header": self._built.header, "manifest": self._built.manifest()}
        self._out.write(pickle_out.dumps(record0))

    @staticmethod
    def reset_kind(entry):
        return "zeros" if entry.group == "optimizer" else None

    def _open(self, entry):
        if entry.first:
            self._out.write(pickle_out.array_prefix(entry.record.shape, entry.record.kind))

    def _close(self, entry):
        if entry.last:
            self._out.write(pickle_out.ARRAY_SUFFIX)

    def zero_tensor(self, entry, key):
        self._open(entry)
        self._write_zeros(entry.n_values * pickle_out.ITEM_SIZES[entry.record.kind], None)
        self._close(entry)

    copy_entry = zero_tensor  # a built record no plan fills holds zeros, as a built file's arrays do

    def write_target(self, entry, key, target, ckpt, progress):
        """The target's rows from the checkpoint as the entry's part of its record; returns the NaN/Inf count."""
        self._open(entry)
        width = pickle_out.ITEM_SIZES[entry.record.kind]
        nonfinite = sum(self._copy(piece, ckpt, width, progress) for piece in target.pieces)
        self._write_zeros(target.pad_rows * target.param.cols * width, progress)
        self._close(entry)
        return nonfinite

    def _copy(self, piece, ckpt, width, progress):
        if piece.transform != "copy":
            raise TtconvError(f"{piece.tensor.name}: the ttml writer takes rows as they are, not {piece.transform}ed")
        info = piece.tensor
        cols = info.matrix_shape()[1]
        source = SOURCE_DTYPES[info.dtype]
        out_dtype = "bf16" if width == 2 else "f32"
        step = max(1, CHUNK_VALUES // max(cols, 1))
        nonfinite = 0
        for first in range(0, piece.rows, step):
            last = min(piece.rows, first + step)
            rows = ckpt.read_rows(info, first, last)
            nonfinite += _nonfinite(rows, source)
            if source == out_dtype:
                self._out.write(rows)
            elif out_dtype == "f32":  # widening is exact in plain numpy
                self._out.write(bf16.widen(rows) if source == "bf16" else rows.astype(np.float32))
            else:
                n = rows.size * width
                if self._buffer.size < n:
                    self._buffer = np.empty(n, dtype=np.uint8)
                kernels.gather(rows.reshape(-1), source, cols, np.arange(last - first, dtype=np.uint32),
                               self._buffer, out_dtype, cols=cols)
                self._out.write(self._buffer[:n])
            progress.advance(rows.size * width)
        return nonfinite

    def _write_zeros(self, nbytes, progress):
        while nbytes:
            n = min(nbytes, self._zeros.size)
            self._out.write(self._zeros[:n])
            if progress is not None:
                progress.advance(n)
            nbytes -= n

    def finish(self):
        pass


def _nonfinite(rows, source):
    if source == "bf16":  # uint16 bits: exponent all ones
        return int(np.count_nonzero((rows & 0x7F80) == 0x7F80))
    return int(rows.size - np.count_nonzero(np.isfinite(rows)))


@contextlib.contextmanager
def ttml_output(built, path, inputs=()):
    """Yield a TtmlWriter whose file replaces path once every record of built was written (atomic_output)."""
    with atomic_output(path, inputs) as out:
        writer = TtmlWriter(built, out)
        writer.begin()
        yield writer
        writer.finish()


def value_bytes(built):
    """Bytes a value of the model takes in the file."""
    kinds = {r.kind for r in built.records if r.group == "model"}
    return 4 if kinds == {"FLOAT32"} else 2
