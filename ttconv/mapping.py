"""Hugging Face -> tt-train name mapping, as tables, and the conversion plan built from them.

Each table line: the tt name under the file's parameter prefix, its checkpoint
source(s) and the row rule. Sources: "a | b" means a, or b when a is absent;
"x + y" stacks the rows of x then y; a ":rope_q", ":rope_kv" or ":T" suffix applies
the RoPE row permutation (with query or key/value heads) or a transpose, ":rope_norm" the
same permutation to the columns of a q/k norm vector (one head_dim). Row rules:
"pad" zero-pads rows up to the tt row count, "crop" keeps the first tt rows.
"""
import re
from dataclasses import dataclass, field

import numpy as np

from .errors import MappingError, TtFileError
from .families import FAMILY_NAMES

LLAMA_TABLE = (
    # tt name                                        checkpoint source(s)                                                                      rows
    ("tok_emb/weight",                               "model.embed_tokens.weight",                                                              "pad"),
    ("fc/weight",                                    "lm_head.weight | model.embed_tokens.weight",                                             "pad"),
    ("ln_fc/gamma",                                  "model.norm.weight",                                                                      ""),
    ("llama_block_{i}/attention_norm/gamma",         "model.layers.{i}.input_layernorm.weight",                                                ""),
    ("llama_block_{i}/mlp_norm/gamma",               "model.layers.{i}.post_attention_layernorm.weight",                                       ""),
    ("llama_block_{i}/attention/q_linear/weight",    "model.layers.{i}.self_attn.q_proj.weight:rope_q",                                        ""),
    ("llama_block_{i}/attention/kv_linear/weight",   "model.layers.{i}.self_attn.k_proj.weight:rope_kv + model.layers.{i}.self_attn.v_proj.weight", ""),
    ("llama_block_{i}/attention/out_linear/weight",  "model.layers.{i}.self_attn.o_proj.weight",                                               ""),
    ("llama_block_{i}/mlp/w1/weight",                "model.layers.{i}.mlp.gate_proj.weight",                                                  ""),
    ("llama_block_{i}/mlp/w2/weight",                "model.layers.{i}.mlp.down_proj.weight",                                                  ""),
    ("llama_block_{i}/mlp/w3/weight",                "model.layers.{i}.mlp.up_proj.weight",                                                    ""),
)
LLAMA_IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)

QWEN3_TABLE = (
    # tt name                                          checkpoint source(s)                                    rows
    ("tok_emb/weight",                                 "model.embed_tokens.weight",                            "pad"),
    ("fc/weight",                                      "lm_head.weight | model.embed_tokens.weight",           "pad"),
    ("ln_fc/gamma",                                    "model.norm.weight",                                    ""),
    ("qwen3_block_{i}/input_layernorm/gamma",          "model.layers.{i}.input_layernorm.weight",              ""),
    ("qwen3_block_{i}/post_attention_layernorm/gamma", "model.layers.{i}.post_attention_layernorm.weight",     ""),
    ("qwen3_block_{i}/self_attn/q_linear/weight",      "model.layers.{i}.self_attn.q_proj.weight:rope_q",      ""),
    ("qwen3_block_{i}/self_attn/k_linear/weight",      "model.layers.{i}.self_attn.k_proj.weight:rope_kv",     ""),
    ("qwen3_block_{i}/self_attn/v_linear/weight",      "model.layers.{i}.self_attn.v_proj.weight",             ""),
    ("qwen3_block_{i}/self_attn/out_linear/weight",    "model.layers.{i}.self_attn.o_proj.weight",             ""),
    ("qwen3_block_{i}/self_attn/q_norm/gamma",         "model.layers.{i}.self_attn.q_norm.weight:rope_norm",   ""),
    ("qwen3_block_{i}/self_attn/k_norm/gamma",         "model.layers.{i}.self_attn.k_norm.weight:rope_norm",   ""),
    ("qwen3_block_{i}/mlp/w1/weight",                  "model.layers.{i}.mlp.gate_proj.weight",                ""),
    ("qwen3_block_{i}/mlp/w2/weight",                  "model.layers.{i}.mlp.down_proj.weight",                ""),
    ("qwen3_block_{i}/mlp/w3/weight",                  "model.layers.{i}.mlp.up_proj.weight",                  ""),
)

# Checkpoint tensors of features tt-train's model does not have: converting without them would
# silently change the model.
# (checkpoint name pattern, feature, what to do instead)
BIASES = (r"(model\.)?layers\.\d+\.(self_attn|mlp)\.\w+_proj\.bias", "biases in a {name}-family model", "")
UNREPRESENTABLE = {
    "llama": (BIASES, (r"(model\.)?layers\.\d+\.self_attn\.[qk]_norm\.weight", "q/k norms",
                       "; a Llama-family model with q/k norms is a Qwen3: use 'ttconv qwen3'")),
    "qwen3": (BIASES,),
    "gpt2": (),
}

GPT2_TABLE = (
    # tt name                                        checkpoint source(s)             rows
    ("tok_emb/weight",                               "wte.weight",                    "pad"),
    ("fc/weight",                                    "lm_head.weight | wte.weight",   "pad"),
    ("pos_emb/weight",                               "wpe.weight",                    "crop"),
    ("ln_fc/gamma",                                  "ln_f.weight",                   ""),
    ("ln_fc/beta",                                   "ln_f.bias",                     ""),
    ("gpt_block_{i}/ln1/gamma",                      "h.{i}.ln_1.weight",             ""),
    ("gpt_block_{i}/ln1/beta",                       "h.{i}.ln_1.bias",               ""),
    ("gpt_block_{i}/attention/qkv_linear/weight",    "h.{i}.attn.c_attn.weight:T",    ""),
    ("gpt_block_{i}/attention/qkv_linear/bias",      "h.{i}.attn.c_attn.bias",        ""),
    ("gpt_block_{i}/attention/out_linear/weight",    "h.{i}.attn.c_proj.weight:T",    ""),
    ("gpt_block_{i}/attention/out_linear/bias",      "h.{i}.attn.c_proj.bias",        ""),
    ("gpt_block_{i}/ln2/gamma",                      "h.{i}.ln_2.weight",             ""),
    ("gpt_block_{i}/ln2/beta",                       "h.{i}.ln_2.bias",               ""),
    ("gpt_block_{i}/mlp/fc1/weight",                 "h.{i}.mlp.c_fc.weight:T",       ""),
    ("gpt_block_{i}/mlp/fc1/bias",                   "h.{i}.mlp.c_fc.bias",           ""),
    ("gpt_block_{i}/mlp/fc2/weight",                 "h.{i}.mlp.c_proj.weight:T",     ""),
    ("gpt_block_{i}/mlp/fc2/bias",                   "h.{i}.mlp.c_proj.bias",         ""),
)
GPT2_IGNORED = (r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias")

TABLES = {"llama": (LLAMA_TABLE, LLAMA_IGNORED), "qwen3": (QWEN3_TABLE, LLAMA_IGNORED),
          "gpt2": (GPT2_TABLE, GPT2_IGNORED)}
BLOCK_0 = {"llama": "llama_block_0/", "qwen3": "qwen3_block_0/", "gpt2": "gpt_block_0/"}
LAYER_PATTERN = {family: re.compile(block.replace("0/", r"(\d+)/")) for family, block in BLOCK_0.items()}
TRANSFORM_NAMES = {"": "copy", "rope_q": "rope", "rope_kv": "rope", "rope_norm": "rope_columns", "T": "transpose"}
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

    @property
    def shape(self):
        """Shape of the rows this tensor gives the tt tensor, before any crop."""
        rows, cols = self.tensor.matrix_shape()
        return (cols, rows) if self.transform == "transpose" else (rows, cols)

    def describe(self):
        how = {"copy": "", "rope": f" (RoPE interleave, {self.heads} heads)", "transpose": " (transposed)",
               "rope_columns": " (RoPE interleave of its head_dim values)"}
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


def canonical_names(family, tensors, where):
    """Checkpoint tensors under the names the tables use.

    GPT-2 names lose an optional 'transformer.' prefix (the original gpt2 repository has
    none); Llama names without 'model.' (a saved LlamaModel) gain it, lm_head aside."""
    named = {}
    for name, info in tensors.items():
        if family == "gpt2":
            short = name[len("transformer."):] if name.startswith("transformer.") else name
        else:
            short = name if name.startswith("model.") or name.startswith("lm_head.") else "model." + name
        if short in named:
            raise MappingError(f"{where}: checkpoint has both {named[short].name} and {name}")
        named[short] = info
    return named


def expand(table, n_layers):
    """Expand {i} once per layer: {tt name: (source spec, row rule)}."""
    rows = {}
    for tt_name, sources, rule in table:
        layers = range(n_layers) if "{i}" in tt_name else [None]
        for i in layers:
            rows[tt_name.format(i=i)] = (sources.format(i=i), rule)
    return rows


def find_prefix(params, family, path):
    """The parameter prefix of a tt file (llama/llama, transformer/transformer, ...)."""
    heads = sorted({name[: -len("/fc/weight")] for name in params if name.endswith("/fc/weight")})

    def with_blocks(kind):
        return [p for p in heads if any(n.startswith(f"{p}/{BLOCK_0[kind]}") for n in params)]

    prefixes = with_blocks(family)
    if len(prefixes) == 1:
        return prefixes[0]
    other = next((kind for kind in BLOCK_0 if kind != family and with_blocks(kind)), None)
    if not prefixes and other:
        hint = f"it holds a {FAMILY_NAMES[other]} model; use 'ttconv {other}'"
    elif prefixes:
        hint = f"several candidate prefixes: {', '.join(prefixes)}"
    else:
        hint = f"no <prefix>/fc/weight with <prefix>/{BLOCK_0[family]}... found"
    raise TtFileError(f"{path}: no recognisable tt-train {family} parameters ({hint})")


def count_tt_layers(params, prefix, family):
    pattern = LAYER_PATTERN[family]
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


def build_plan(family, tt, params, tensors, layout, meta_style=False):
    """Match tt parameters with checkpoint tensors.

    layout: dict with "n_layers" and, for Llama and Qwen3, the head counts "rope_q"/"rope_kv" and
    "head_dim" (a q/k norm vector is permuted within head_dim, whatever the head counts).
    tensors: {checkpoint name (as used in the table): TensorInfo}.
    """
    table, ignored = TABLES[family]
    prefix = find_prefix(params, family, tt.path)
    tt_layers = count_tt_layers(params, prefix, family)
    if tt_layers != layout["n_layers"]:
        raise MappingError(
            f"{tt.path} has {tt_layers} {family} blocks but the checkpoint has {layout['n_layers']} layers; "
            "dump the init file with this model's config"
        )
    rows = expand(table, layout["n_layers"])
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
            if piece.transform in ("rope", "rope_columns"):
                _check_heads(piece, param.data.key, layout["head_dim"])
        _fit_rows(target, rule, tt_name, shapes)
        notices.extend(target.notes)
        used.update(p.tensor.name for p in target.pieces)
        targets[param.data.key] = target
    if not targets:
        raise TtFileError(f"{tt.path}: no tt-train {family} weights found under prefix {prefix}")
    skip = re.compile("|".join(ignored))
    unused = sorted(t.name for n, t in tensors.items() if t.name not in used and not skip.fullmatch(n))
    _refuse_unrepresentable(family, unused)
    return Plan(family, prefix, targets, untouched, unused, notices)


def _refuse_unrepresentable(family, unused):
    for pattern, feature, instead in UNREPRESENTABLE[family]:
        found = [name for name in unused if re.fullmatch(pattern, name)]
        if found:
            more = f" and {len(found) - 1} more" if len(found) > 1 else ""
            raise MappingError(f"checkpoint has {feature.format(name=FAMILY_NAMES[family])} ({found[0]}{more}), "
                               f"which tt-train's {FAMILY_NAMES[family]} cannot represent{instead}")


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


# Hugging Face's module order (the order of a model's state dict, in which save_pretrained fills its
# shards), by name without its "model." / "transformer." prefix: before the blocks, in each block,
# after them. Names not listed follow their group's listed names, by name.
LLAMA_HF_ORDER = (
    ("embed_tokens.weight",),
    ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
     "self_attn.q_norm.weight", "self_attn.k_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
     "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"),
    ("norm.weight", "lm_head.weight"),
)
HF_ORDER = {
    "llama": LLAMA_HF_ORDER,
    "qwen3": LLAMA_HF_ORDER,
    "gpt2": (
        ("wte.weight", "wpe.weight"),
        ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
         "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
         "mlp.c_proj.bias"),
        ("ln_f.weight", "ln_f.bias", "lm_head.weight"),
    ),
}
_HF_BLOCK = re.compile(r"(?:layers|h)\.(\d+)\.(.+)")


def hf_order_key(family, name):
    """Sort key that puts a checkpoint's tensor names in Hugging Face's module order."""
    before, block, after = HF_ORDER[family]
    short = re.sub(r"^(model|transformer)\.", "", name)
    match = _HF_BLOCK.fullmatch(short)
    if match:
        rest = match.group(2)
        return (1, int(match.group(1)), block.index(rest) if rest in block else len(block), name)
    if short in before:
        return (0, 0, before.index(short), name)
    return (2, 0, after.index(short) if short in after else len(after), name)
