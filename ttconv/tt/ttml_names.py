"""tt-train Python-side (ttml) parameter names -> the names ttconv's mapping tables use.

Each table line: a ttml name under the model's root (its class name), how its rows are fused
and which canonical names (the C++ side's, as in checkpoint directories) take which parts.
"q", "k", "v", "gate", "up" are parts of a fused linear, in the order its rows hold them; a
canonical name given several parts stacks them ([K; V] for kv_linear). Fusions: "qkv" rows
[Q | K | V] (Q as many rows as the attention output projection has columns, K and V halves of
the rest), "kv" rows [K | V], "gate_up" rows [gate | up]. Under N-way tensor parallelism each
fused tensor is gathered rank-interleaved ([Q0 K0 V0 | Q1 K1 V1 | ...]), so a part is every
rank's slice of it in turn. The three schemes of a model are told apart by the names present.
"""
import re

from ..errors import TtFileError

FUSIONS = {"": ("all",), "qkv": ("q", "k", "v"), "kv": ("k", "v"), "gate_up": ("gate", "up")}

LLAMA = (
    # ttml name (under Llama/)                  fused      canonical name (under Llama/) = parts
    ("tok_emb/weight",                          "",        "tok_emb/weight"),
    ("fc/weight",                               "",        "fc/weight"),
    ("ln_fc/gamma",                             "",        "ln_fc/gamma"),
    ("blocks/{i}/attention_norm/gamma",         "",        "llama_block_{i}/attention_norm/gamma"),
    ("blocks/{i}/mlp_norm/gamma",               "",        "llama_block_{i}/mlp_norm/gamma"),
    ("blocks/{i}/attention/q_linear/weight",    "",        "llama_block_{i}/attention/q_linear/weight"),
    ("blocks/{i}/attention/kv_linear/weight",   "kv",      "llama_block_{i}/attention/kv_linear/weight = k v"),
    ("blocks/{i}/attention/qkv_linear/weight",  "qkv",     "llama_block_{i}/attention/q_linear/weight = q; "
                                                           "llama_block_{i}/attention/kv_linear/weight = k v"),
    ("blocks/{i}/attention/out_linear/weight",  "",        "llama_block_{i}/attention/out_linear/weight"),
    ("blocks/{i}/mlp/w1/weight",                "",        "llama_block_{i}/mlp/w1/weight"),
    ("blocks/{i}/mlp/w2/weight",                "",        "llama_block_{i}/mlp/w2/weight"),
    ("blocks/{i}/mlp/w3/weight",                "",        "llama_block_{i}/mlp/w3/weight"),
    ("blocks/{i}/mlp/w_gate_up/weight",         "gate_up", "llama_block_{i}/mlp/w1/weight = gate; "
                                                           "llama_block_{i}/mlp/w3/weight = up"),
)

_QWEN3_BLOCK = (
    # ttml name within a block (blocks/{i}/ or model/layers/{i}/)   fused   canonical name (under Qwen3/)
    ("input_layernorm/weight",           "",   "qwen3_block_{i}/input_layernorm/gamma"),
    ("post_attention_layernorm/weight",  "",   "qwen3_block_{i}/post_attention_layernorm/gamma"),
    ("self_attn/q_proj/weight",          "",   "qwen3_block_{i}/self_attn/q_linear/weight"),
    ("self_attn/k_proj/weight",          "",   "qwen3_block_{i}/self_attn/k_linear/weight"),
    ("self_attn/v_proj/weight",          "",   "qwen3_block_{i}/self_attn/v_linear/weight"),
    ("self_attn/kv_proj/weight",         "kv", "qwen3_block_{i}/self_attn/k_linear/weight = k; "
                                               "qwen3_block_{i}/self_attn/v_linear/weight = v"),
    ("self_attn/o_proj/weight",          "",   "qwen3_block_{i}/self_attn/out_linear/weight"),
    ("self_attn/q_norm/weight",          "",   "qwen3_block_{i}/self_attn/q_norm/gamma"),
    ("self_attn/k_norm/weight",          "",   "qwen3_block_{i}/self_attn/k_norm/gamma"),
    ("mlp/gate_proj/weight",             "",   "qwen3_block_{i}/mlp/w1/weight"),
    ("mlp/up_proj/weight",               "",   "qwen3_block_{i}/mlp/w3/weight"),
    ("mlp/down_proj/weight",             "",   "qwen3_block_{i}/mlp/w2/weight"),
)
QWEN3 = (
    ("tok_emb/weight",             "", "tok_emb/weight"),
    ("fc/weight",                  "", "fc/weight"),
    ("ln_fc/weight",               "", "ln_fc/gamma"),
    # the older names that mirror Hugging Face's
    ("model/embed_tokens/weight",  "", "tok_emb/weight"),
    ("lm_head/weight",             "", "fc/weight"),
    ("model/norm/weight",          "", "ln_fc/gamma"),
) + tuple((f"{block}/{name}", fused, canonical) for block in ("blocks/{i}", "model/layers/{i}")
          for name, fused, canonical in _QWEN3_BLOCK)

NANOGPT = (
    ("tok_emb/weight",                          "", "tok_emb/weight"),
    ("pos_emb/weight",                          "", "pos_emb/weight"),
    ("fc/weight",                               "", "fc/weight"),
    ("ln_f_gamma",                              "", "ln_fc/gamma"),
    ("ln_f_beta",                               "", "ln_fc/beta"),
    ("ln_f/gamma",                              "", "ln_fc/gamma"),
    ("ln_f/beta",                               "", "ln_fc/beta"),
    # the first Python NanoGPT's names (wte, wpe; lm_head_weight is wte's weight, tied)
    ("wte/weight",                              "", "tok_emb/weight"),
    ("wpe/weight",                              "", "pos_emb/weight"),
    ("lm_head_weight",                          "", "fc/weight"),
    ("blocks/{i}/ln1/gamma",                    "", "gpt_block_{i}/ln1/gamma"),
    ("blocks/{i}/ln1/beta",                     "", "gpt_block_{i}/ln1/beta"),
    ("blocks/{i}/ln2/gamma",                    "", "gpt_block_{i}/ln2/gamma"),
    ("blocks/{i}/ln2/beta",                     "", "gpt_block_{i}/ln2/beta"),
    ("blocks/{i}/attention/qkv_linear/weight",  "", "gpt_block_{i}/attention/qkv_linear/weight"),
    ("blocks/{i}/attention/qkv_linear/bias",    "", "gpt_block_{i}/attention/qkv_linear/bias"),
    ("blocks/{i}/attention/out_linear/weight",  "", "gpt_block_{i}/attention/out_linear/weight"),
    ("blocks/{i}/attention/out_linear/bias",    "", "gpt_block_{i}/attention/out_linear/bias"),
    ("blocks/{i}/mlp/fc1/weight",               "", "gpt_block_{i}/mlp/fc1/weight"),
    ("blocks/{i}/mlp/fc1/bias",                 "", "gpt_block_{i}/mlp/fc1/bias"),
    ("blocks/{i}/mlp/fc2/weight",               "", "gpt_block_{i}/mlp/fc2/weight"),
    ("blocks/{i}/mlp/fc2/bias",                 "", "gpt_block_{i}/mlp/fc2/bias"),
)

# model root (class name) -> (family, table)
ROOTS = {"Llama": ("llama", LLAMA), "Qwen3": ("qwen3", QWEN3), "NanoGPT": ("gpt2", NANOGPT)}
LORA_WRAPPER = "LoraModel/model/"
LORA_SUFFIXES = ("/lora_A", "/lora_B")
EMBEDDINGS = ("tok_emb/weight", "fc/weight")  # a tied embedding is saved under either


def _compile(table):
    lines = []
    for name, fused, targets in table:
        pattern = re.compile(re.escape(name).replace(re.escape("{i}"), r"(?P<i>\d+)"))
        parts = []
        for target in targets.split(";"):
            canonical, _, picked = target.strip().partition(" = ")
            parts.append((canonical, tuple(picked.split()) or FUSIONS[fused]))
        for _, picked in parts:
            unknown = set(picked) - set(FUSIONS[fused])
            if unknown:
                raise AssertionError(f"{name}: parts {unknown} are not parts of a {fused or 'plain'} tensor")
        lines.append((pattern, fused, parts))
    return lines


COMPILED = {root: (family, _compile(table)) for root, (family, table) in ROOTS.items()}


def _translates(root, name):
    _, lines = COMPILED[root]
    rest = name[len(root) + 1:]
    return any(pattern.fullmatch(rest) for pattern, _, _ in lines)


def base_name(name):
    """The weight an adapter tensor belongs to (…/lora_A -> …/weight); other names as they are."""
    for suffix in LORA_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)] + "/weight"
    return name


def model_root(path, names):
    """(root, family, wrapper) of a ttml model from its parameter names: wrapper is the prefix a
    LoRA-wrapped model's names carry ("LoraModel/model/", then the model's own names, with or
    without its class name) and is taken off by local_name; TtFileError naming what is not one."""
    wrapper = ""
    if names and all(name.startswith(LORA_WRAPPER) for name in names):
        wrapper = LORA_WRAPPER
        names = [name[len(wrapper):] for name in names]
        heads = {name.split("/", 1)[0] for name in names}
        if len(heads) > 1 or not heads & set(ROOTS):  # the model's own names without its class name
            fits = [root for root in ROOTS if all(_translates(root, f"{root}/{base_name(n)}") for n in names)]
            if len(fits) != 1:
                raise TtFileError(f"{path}: a LoRA-wrapped model whose names fit {' and '.join(fits) or 'no model'} "
                                  f"ttconv knows ({', '.join(ROOTS)})")
            return fits[0], ROOTS[fits[0]][0], wrapper
    roots = sorted({name.split("/", 1)[0] for name in names})
    if len(roots) != 1 or roots[0] not in ROOTS:
        known = ", ".join(ROOTS)
        raise TtFileError(f"{path}: model parameters under {', '.join(roots) or 'nothing'}; ttconv reads ttml "
                          f"models under {known}{' (or LoRA-wrapped: ' + LORA_WRAPPER + '...)' if not wrapper else ''}")
    return roots[0], ROOTS[roots[0]][0], wrapper + roots[0] + "/"


def local_name(root, wrapper, name):
    """A record's name as root/... (the LoRA wrapper taken off)."""
    return f"{root}/{name[len(wrapper):]}"


def translate(path, root, name):
    """(fused, [(canonical name under root, parts)], layer or None) of a ttml parameter name;
    TtFileError naming a name no table line knows."""
    family, lines = COMPILED[root]
    rest = name[len(root) + 1:]
    for pattern, fused, parts in lines:
        match = pattern.fullmatch(rest)
        if match:
            layer = match.groupdict().get("i")
            return fused, [(f"{root}/{c.format(i=layer)}", picked) for c, picked in parts]
    raise TtFileError(f"{path}: unknown {root} parameter {name!r} (not a tensor of tt-train's {root})")
