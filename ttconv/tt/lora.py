"""LoRA adapters in a tt-train file, directory or ttml checkpoint, and the model with them merged.

tt-train's Python side (ttml LoraModel) keeps, beside an adapted linear's frozen `weight`,
`lora_A` [1, 1, r, in] and `lora_B` [1, 1, out, r] (PEFT's orientation; lora_B's rows in the
linear's own row order: q/k interleaved for RoPE, a fused linear's parts stacked). Its C++ side
(LoRALinearLayer) keeps `lora_a` [1, 1, in, r] and `lora_b` [1, 1, r, out], transposed. Either
way the adapted linear computes W x + scale * B A x, scale alpha / r (alpha / sqrt(r) with
rsLoRA). Readers list the adapters' tensors beside the weights, under the linear's name.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..errors import MappingError, TtconvError, TtFileError
from .rows import DecodedRows, RowBlock, RowGatherer, ScratchBuffer

# tensor name ending -> (which matrix, transposed relative to PEFT)
SUFFIXES = {"/lora_A": ("A", False), "/lora_B": ("B", False), "/lora_a": ("A", True), "/lora_b": ("B", True)}


def is_lora_name(name):
    """True for an adapter tensor's name (lora_A/lora_B of ttml, lora_a/lora_b of tt-train's C++ side)."""
    return any(name.endswith(suffix) for suffix in SUFFIXES)


def without_adapters(params):
    """A reader's parameters with the adapters' own tensors left out: the model's weights."""
    return {name: param for name, param in params.items() if not is_lora_name(name)}


@dataclass
class Adapter:
    """The LoRA adapter of one linear (target: its weight's name): its A and B parameters of the
    reader; transposed: stored as tt-train's C++ side stores them ([in, r] and [r, out])."""

    target: str
    a: object
    b: object
    transposed: bool
    rank: int


def find_adapters(path, params):
    """{weight name: Adapter} of the adapters among a reader's parameters; TtFileError for an A
    without its B (or the reverse) or shapes that do not fit the weight."""
    found = {}
    for name, param in params.items():
        for suffix, (which, transposed) in SUFFIXES.items():
            if name.endswith(suffix):
                found.setdefault(name[:-len(suffix)], {})[which] = (param, transposed, name)
    adapters = {}
    for base, parts in sorted(found.items()):
        if set(parts) != {"A", "B"}:
            missing = ({"A", "B"} - set(parts)).pop()
            raise TtFileError(f"{path}: {next(iter(parts.values()))[2]} has no lora_{missing} beside it")
        (a, transposed, a_name), (b, _, b_name) = parts["A"], parts["B"]
        target = base + "/weight"
        if target not in params:
            raise TtFileError(f"{path}: {a_name} adapts {target}, which the file does not hold")
        weight = params[target]
        a_rows, a_cols = (a.cols, a.rows) if transposed else (a.rows, a.cols)
        b_rows, b_cols = (b.cols, b.rows) if transposed else (b.rows, b.cols)
        if a_cols != weight.cols or b_rows != weight.rows or a_rows != b_cols:
            raise TtFileError(f"{path}: {a_name} [{a.rows}, {a.cols}] and {b_name} [{b.rows}, {b.cols}] do not "
                              f"adapt {target} [{weight.rows}, {weight.cols}]")
        adapters[target] = Adapter(target, a, b, transposed, a_rows)
    return adapters


def lora_scale(alpha, rank, rslora):
    """The factor of B A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def matrices(reader, adapter):
    """(A [r, in], B [out, r]) as float32, PEFT's orientation."""
    a = reader.read_values(adapter.a.data).reshape(adapter.a.rows, adapter.a.cols)
    b = reader.read_values(adapter.b.data).reshape(adapter.b.rows, adapter.b.cols)
    return (a.T.copy(), b.T.copy()) if adapter.transposed else (a, b)


class _MergedData:
    def __init__(self, base, adapter):
        self.key = base.data.key
        self.base = base
        self.adapter = adapter


class _MergedParameter:
    def __init__(self, base, adapter):
        self.name = base.name
        self.data = _MergedData(base, adapter)
        self.rows, self.cols, self.dims = base.rows, base.cols, base.dims


class LoraMerged:
    """A reader whose adapted weights read as W + scale * B A (float32), one tensor at a time; the
    adapters' own tensors are left out. Everything else is the wrapped reader's."""

    def __init__(self, reader, adapters, alpha, rslora):
        self.reader = reader
        self.path = reader.path
        self.adapters = adapters
        self.alpha, self.rslora = alpha, rslora
        self.base = without_adapters(reader.weights())
        self.weights_note = reader.weights_note

    def __getattr__(self, name):  # the wrapped reader's other attributes (tp, fused, header, ...)
        return getattr(self.reader, name)

    def weights(self):
        return {n: _MergedParameter(p, self.adapters[n]) if n in self.adapters else p for n, p in self.base.items()}

    def parameters(self, group=None):
        return self.weights() if group in (None, "model") else {}

    def merged(self, data):
        """W + scale * B A of an adapted weight, [rows, cols] float32 (the product in float32)."""
        base = data.base
        weight = self.reader.read_values(base.data).reshape(base.rows, base.cols)
        a, b = matrices(self.reader, data.adapter)
        return weight + np.float32(lora_scale(self.alpha, data.adapter.rank, self.rslora)) * (b @ a)

    def read_values(self, data):
        if isinstance(data, _MergedData):
            return self.merged(data).reshape(-1)
        return self.reader.read_values(data)

    def row_source(self, param, scratch):
        """Rows of an adapted weight merged as they are read (the weight's rows through its reader's
        own row source), else the wrapped reader's row source."""
        if isinstance(param.data, _MergedData):
            return _MergedRows(self, param.data)
        return self.reader.row_source(param, scratch)

    def decoded_rows(self, param):
        if isinstance(param.data, _MergedData):
            return DecodedRows(self.merged(param.data), param.cols)
        return self.reader.decoded_rows(param)


class _MergedRows:
    """Row source of W + scale * B A: W's rows as float32 plus the product's same rows."""

    def __init__(self, merged, data):
        self._weight = RowGatherer(merged.reader, data.base, ScratchBuffer())
        self._a, self._b = matrices(merged.reader, data.adapter)
        self._scale = np.float32(lora_scale(merged.alpha, data.adapter.rank, merged.rslora))
        self._cols = data.base.cols

    def read(self, first, count):
        values = self._weight.float32_rows(first, first + count) + self._scale * (self._b[first:first + count] @ self._a)
        return RowBlock(values.reshape(-1), "f32", False, self._cols, first)

    def close(self):
        self._weight.close()


def recorded_lora(header):
    """(alpha, use_rslora) from a LoraConfig-like record in a ttml header ({..., "alpha", "rank"}), or None."""
    for value in (header or {}).values():
        fields = getattr(value, "fields", value)
        if isinstance(fields, dict) and "alpha" in fields and "rank" in fields:
            try:
                return float(fields["alpha"]), bool(fields.get("use_rslora", False))
            except (TypeError, ValueError):
                raise MappingError(f"the header's LoRA config has alpha {fields['alpha']!r}") from None
    return None


def lora_setup(tt, lora_alpha, rslora):
    """(adapters, alpha, rslora) of a reader: its adapters ({} when none) and the alpha to use
    (lora_alpha, else what the file records); MappingError naming --lora-alpha when neither says."""
    adapters = find_adapters(tt.path, tt.weights())
    if not adapters:
        return adapters, lora_alpha, rslora
    recorded = recorded_lora(getattr(tt, "header", None))
    if lora_alpha is None:
        if recorded is None:
            ranks = sorted({a.rank for a in adapters.values()})
            linears = len({id(getattr(a.a.data, "record", a.a.data)) for a in adapters.values()})  # fused: once
            raise MappingError(f"{tt.path} is a LoRA checkpoint (rank {', '.join(map(str, ranks))}, {linears} "
                               "adapted linears) and does not record alpha: give --lora-alpha ALPHA, the alpha it "
                               "was trained with (LoraConfig alpha)")
        lora_alpha, rslora = recorded[0], rslora or recorded[1]
    return adapters, float(lora_alpha), rslora


def merged_reader(tt, adapters, alpha, rslora):
    """The reader with every adapter merged (W + scale B A, scale from alpha and the adapter's rank);
    TtconvError for a file of adapters only, which has no W to merge them into."""
    if getattr(tt, "adapters_only", False):
        raise TtconvError(f"{tt.path}: holds only LoRA adapters, so there is nothing to merge them into (and "
                          "nothing to run); export it as a PEFT adapter folder, the default of to-hf, and apply "
                          "that to the original model")
    return LoraMerged(tt, adapters, alpha, rslora)


def refuse_lora_options(path, merge, lora_alpha, rslora):
    """Refuse LoRA options for a file without adapters (they would silently do nothing)."""
    given = [flag for flag, on in (("--merge-lora", merge), ("--lora-alpha", lora_alpha is not None),
                                   ("--rslora", rslora)) if on]
    if given:
        raise TtconvError(f"{path}: holds no LoRA adapters, so {' and '.join(given)} "
                          f"{'does' if len(given) == 1 else 'do'} not apply")
