"""Hugging Face -> tt-train name mapping, as tables, and the conversion plan built from them.

Each table line: the tt name under the file's parameter prefix, its checkpoint
source(s) and the row rule. Sources: "a | b" means a, or b when a is absent;
"x + y" stacks the rows of x then y; a ":rope_q", ":rope_kv" or ":T" suffix applies
the RoPE row permutation (with query or key/value heads) or a transpose, ":rope_norm" the
same permutation to the columns of a q/k norm vector (one head_dim); ":plus1" means tt-train holds the
values plus one (a zero-centred norm's 1 + w folded in), ":tapJ" that the tt tensor is column J of
the checkpoint's [rows, K] matrix as one row (a depthwise conv's tap). Row rules:
"pad" zero-pads rows up to the tt row count, "crop" keeps the first tt rows. The tables themselves
are each family's (ttconv.families); build_plan takes the Family.
"""
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import MappingError, TtFileError

# Checkpoint tensors of features tt-train's models do not have (a family's `unrepresentable` lists
# them): converting without them would silently change the model.
# (checkpoint name pattern, feature ({name}: the family's display name), what to do instead)
BIASES = (r"(model\.)?layers\.\d+\.(self_attn|mlp)\.\w+_proj\.bias", "biases in a {name}-family model", "")
# What Llama-style decoders share: rotary buffers a checkpoint may hold, and Hugging Face's module
# order (see compile_hf_order).
ROTARY_BUFFERS = r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
DECODER_HF_ORDER = (
    ("embed_tokens.weight",),
    ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
     "self_attn.q_norm.weight", "self_attn.k_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
     "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"),
    ("norm.weight", "lm_head.weight"),
)
TRANSFORM_NAMES = {"": "copy", "rope_q": "rope", "rope_kv": "rope", "rope_norm": "rope_columns", "T": "transpose",
                   "plus1": "offset"}
TAP = re.compile(r"tap(\d+)")
HINTS = {
    "tok_emb/weight": "vocab_size or hidden_size",
    "fc/weight": "vocab_size or hidden_size",
    "pos_emb/weight": "n_positions or n_embd",
    "kv_linear": "num_key_value_heads or head_dim",
    "k_linear": "num_key_value_heads or head_dim",
    "v_linear": "num_key_value_heads or head_dim",
    "q_linear": "num_attention_heads or head_dim",
    "q_norm": "head_dim",
    "k_norm": "head_dim",
    "mlp": "intermediate_size",
}


@dataclass
class Piece:
    """Rows that one checkpoint tensor contributes to a tt tensor."""

    tensor: object
    transform: str
    heads: int = 0
    rows: int = 0
    column: int = 0  # the column a "column" piece takes

    @property
    def shape(self):
        """Shape of the rows this tensor gives the tt tensor, before any crop."""
        rows, cols = self.tensor.matrix_shape()
        if self.transform == "column":
            return (1, rows)
        return (cols, rows) if self.transform == "transpose" else (rows, cols)

    def describe(self):
        how = {"copy": "", "rope": f" (RoPE interleave, {self.heads} heads)", "transpose": " (transposed)",
               "rope_columns": " (RoPE interleave of its head_dim values)", "offset": " (plus one)",
               "column": f" (column {self.column})"}
        return f"{self.tensor.name}{how[self.transform]}"


@dataclass
class Target:
    """One tt tensor to write: its parameter, source pieces and zero rows to append; float32 marks an
    optimizer's full-precision master copy of a weight (written as float32 where a format can)."""

    param: object
    pieces: list
    pad_rows: int = 0
    notes: list = field(default_factory=list)
    float32: bool = False

    @property
    def n_values(self):
        return self.param.rows * self.param.cols

    def describe(self):
        text = " + ".join(p.describe() for p in self.pieces)
        if self.pad_rows:
            text += f" + {self.pad_rows} zero rows"
        return text


@dataclass
class Plan:
    """What a conversion does: targets by data key, entries left alone, tensors unused."""

    family: str
    prefix: str
    targets: dict
    untouched: list
    unused: list
    notices: list


def expand(table, n_layers, n_experts=0):
    """Expand {i} once per layer and {e} once per expert of a mixture-of-experts layer:
    {tt name: (source spec, row rule)}."""
    rows = {}
    for tt_name, sources, rule in table:
        layers = range(n_layers) if "{i}" in tt_name else [None]
        experts = range(n_experts) if "{e}" in tt_name else [None]
        for i in layers:
            for e in experts:
                rows[tt_name.format(i=i, e=e)] = (sources.format(i=i, e=e), rule)
    return rows


def find_prefix(params, family, path, others=()):
    """The parameter prefix of a tt file (llama/llama, transformer/transformer, ...) holding the family's
    blocks; others: the families to name when the file holds one of them instead."""
    heads = sorted({name[: -len("/fc/weight")] for name in params if name.endswith("/fc/weight")})

    def with_blocks(kind):
        return [p for p in heads if any(n.startswith(f"{p}/{kind.block_0}") for n in params)]

    prefixes = with_blocks(family)
    if len(prefixes) == 1:
        return prefixes[0]
    other = next((kind for kind in others if kind is not family and with_blocks(kind)), None)
    if not prefixes and other:
        hint = f"it holds a {other.display} model; use 'ttconv {other.name}'"
    elif prefixes:
        hint = f"several candidate prefixes: {', '.join(prefixes)}"
    else:
        hint = f"no <prefix>/fc/weight with <prefix>/{family.block_0}... found"
    raise TtFileError(f"{path}: no recognisable tt-train {family.name} parameters ({hint})")


def count_tt_layers(params, prefix, family):
    """How many of the family's blocks lie under prefix."""
    pattern = family.layer_pattern
    indices = {int(m.group(1)) for name in params if name.startswith(prefix + "/")
               for m in [pattern.match(name[len(prefix) + 1:])] if m}
    return max(indices) + 1 if indices else 0


def _hint(tt_name):
    for fragment, hint in HINTS.items():
        if fragment in tt_name:
            return hint
    return "hidden_size or number of layers"


def _resolve(spec, lookup, tt_key, heads):
    pieces = []
    for part in spec.split(" + "):
        names, _, transform = part.partition(":")
        for name in (n.strip() for n in names.split("|")):
            if name in lookup:
                tap = TAP.fullmatch(transform)
                if tap:
                    pieces.append(Piece(lookup[name], "column", column=int(tap.group(1))))
                    break
                kind = TRANSFORM_NAMES[transform]
                if kind == "rope" and transform not in heads:
                    kind = "copy"  # --meta_style: rows are already interleaved
                pieces.append(Piece(lookup[name], kind, heads.get(transform, 0)))
                break
        else:
            raise MappingError(f"checkpoint has no tensor {names.strip()} (needed for {tt_key})")
    return pieces


def _fit_rows(target, rule, tt_name, shapes):
    param = target.param
    tt_shape = [param.rows, param.cols]
    total = sum(rows for rows, _ in shapes)
    given = " + ".join(f"{list(shape)} {p.tensor.name}" for shape, p in zip(shapes, target.pieces))
    mismatch = f"shape mismatch for {param.data.key}: init file has {tt_shape}, checkpoint gives {given}"
    if any(cols != param.cols for _, cols in shapes):
        raise MappingError(f"{mismatch}; was the init file dumped for another config ({_hint(tt_name)})?")
    if rule == "pad" and total <= param.rows:
        target.pad_rows = param.rows - total
    elif rule == "crop" and total >= param.rows:
        if total > param.rows:
            target.pieces[0].rows = param.rows
            target.notes.append(
                f"{param.data.key}: tt-train context is {param.rows} positions, checkpoint has {total}; "
                f"keeping the first {param.rows} rows"
            )
    elif total != param.rows:
        cause = {
            "pad": "the checkpoint vocabulary is larger than the tt model's",
            "crop": "the tt model's context is longer than the checkpoint's n_positions",
        }.get(rule, f"was the init file dumped for another config ({_hint(tt_name)})?")
        raise MappingError(f"{mismatch}; {cause}")


def build_plan(family, tt, params, tensors, layout, meta_style=False, others=()):
    """Match tt parameters with checkpoint tensors by the family's table (family: a Family).

    layout: dict with "n_layers" and, for RoPE families, the head counts "rope_q"/"rope_kv" and
    "head_dim" (a q/k norm vector is permuted within head_dim, whatever the head counts).
    tensors: {checkpoint name (as used in the table): TensorInfo}; others: see find_prefix.
    """
    table, ignored = family.table, family.ignored
    prefix = find_prefix(params, family, tt.path, others)
    tt_layers = count_tt_layers(params, prefix, family)
    if tt_layers != layout["n_layers"]:
        raise MappingError(
            f"{tt.path} has {tt_layers} {family.name} blocks but the checkpoint has {layout['n_layers']} layers; "
            "dump the init file with this model's config"
        )
    rows = expand(table, layout["n_layers"], layout.get("n_experts", 0))
    heads = {} if meta_style else {k: layout[k] for k in ("rope_q", "rope_kv") if k in layout}
    targets, untouched, used, notices = {}, [], set(), []
    for name, param in params.items():
        tt_name = name[len(prefix) + 1:] if name.startswith(prefix + "/") else None
        if tt_name not in rows:
            untouched.append(param.data.key)
            continue
        spec, rule = rows[tt_name]
        target = Target(param, _resolve(spec, tensors, param.data.key, heads))
        shapes = [piece.shape for piece in target.pieces]
        for piece, shape in zip(target.pieces, shapes):
            piece.rows = shape[0]
            if piece.transform == "column" and piece.column >= piece.tensor.matrix_shape()[1]:
                raise MappingError(f"{param.data.key}: {piece.tensor.name} has {piece.tensor.matrix_shape()[1]} "
                                   f"columns, no column {piece.column}")
            if piece.transform in ("rope", "rope_columns"):
                _check_heads(piece, param.data.key, layout["head_dim"])
        _fit_rows(target, rule, tt_name, shapes)
        notices.extend(target.notes)
        used.update(p.tensor.name for p in target.pieces)
        targets[param.data.key] = target
    if not targets:
        raise TtFileError(f"{tt.path}: no tt-train {family.name} weights found under prefix {prefix}")
    skip = re.compile("|".join(ignored) or r"(?!)")
    unused = sorted(t.name for n, t in tensors.items() if t.name not in used and not skip.fullmatch(n))
    _refuse_unrepresentable(family, unused)
    return Plan(family.name, prefix, targets, untouched, unused, notices)


def _refuse_unrepresentable(family, unused):
    for pattern, feature, instead in family.unrepresentable:
        found = [name for name in unused if re.fullmatch(pattern, name)]
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise MappingError(f"checkpoint has {feature.format(name=family.display)} ({found[0]}{more}), "
                               f"which tt-train's {family.display} cannot represent{instead}")


def _check_heads(piece, tt_key, head_dim):
    rows, cols = piece.tensor.matrix_shape()
    if piece.transform == "rope_columns":
        if cols != head_dim or rows != 1 or head_dim % 2:
            raise MappingError(f"cannot apply the RoPE permutation to {piece.tensor.name} for {tt_key}: it has "
                               f"shape {list(piece.tensor.shape)}, config.json says head_dim {head_dim}")
        return
    if rows != piece.heads * head_dim or head_dim % 2:
        raise MappingError(
            f"cannot apply the RoPE permutation for {tt_key}: {piece.tensor.name} has {rows} rows, "
            f"config.json says {piece.heads} heads x head_dim {head_dim} = {piece.heads * head_dim}; "
            "check num_attention_heads, num_key_value_heads and head_dim"
        )


def rope_order(first, last, head_dim):
    """The tt rows of HF rows first..last that undo the RoPE interleave: HF row i of a head is the
    head's tt row 2i, HF row head_dim/2 + i its tt row 2i + 1."""
    rows = np.arange(first, last)
    i = rows % head_dim
    half = head_dim // 2
    return (rows // head_dim * head_dim + np.where(i < half, 2 * i, 2 * (i - half) + 1)).astype(np.uint32)


_HF_BLOCK = re.compile(r"(?:layers|h)\.(\d+)\.(.+)")


def compile_hf_order(order):
    """A sort key that puts a checkpoint's tensor names in Hugging Face's module order (the order of a
    model's state dict, in which save_pretrained fills its shards). order: the names without their
    "model." / "transformer." prefix before the blocks, in each block, after them; names not listed
    follow their group's listed names, by name."""
    before, block, after = order

    def key(name):
        short = re.sub(r"^(model|transformer)\.", "", name)
        match = _HF_BLOCK.fullmatch(short)
        if match:
            rest = match.group(2)
            return (1, int(match.group(1)), block.index(rest) if rest in block else len(block), name)
        if short in before:
            return (0, 0, before.index(short), name)
        return (2, 0, after.index(short) if short in after else len(after), name)

    return key
