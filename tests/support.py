"""Test helpers, independent of ttconv's code paths: tt-train-style init files written
with msgpack-python, Hugging Face checkpoints written with safetensors, a loop-based
numpy reference of the mapping, and numpy forward passes of both model families."""
import json
import math
import os
import random

import ml_dtypes
import msgpack
import numpy as np
from safetensors.numpy import save_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

DEFAULT_VARIANTS = {"shape": 12, "int": 2, "bool": 0, "floats": 10}


# ---------------------------------------------------------------- tt-train init files

def llama_tt_shapes(cfg, vocab_rows, tied=False):
    """{tt name (without prefix): (rows, cols)} of a tt-train Llama for a HF config."""
    e, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", h)
    d = cfg.get("head_dim") or e // h
    inter = cfg["intermediate_size"]
    shapes = {} if tied else {"tok_emb/weight": (vocab_rows, e)}
    shapes["fc/weight"] = (vocab_rows, e)
    shapes["ln_fc/gamma"] = (1, e)
    for i in range(cfg["num_hidden_layers"]):
        b = f"llama_block_{i}/"
        shapes[b + "attention_norm/gamma"] = (1, e)
        shapes[b + "mlp_norm/gamma"] = (1, e)
        shapes[b + "attention/q_linear/weight"] = (h * d, e)
        shapes[b + "attention/kv_linear/weight"] = (2 * kv * d, e)
        shapes[b + "attention/out_linear/weight"] = (e, h * d)
        shapes[b + "mlp/w1/weight"] = (inter, e)
        shapes[b + "mlp/w2/weight"] = (e, inter)
        shapes[b + "mlp/w3/weight"] = (inter, e)
    return shapes


def qwen3_tt_shapes(cfg, vocab_rows):
    """{tt name (without prefix): (rows, cols)} of a tt-train Qwen3 for a HF config (tt-train's qwen3.cpp)."""
    e, h, kv, d = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    inter = cfg["intermediate_size"]
    shapes = {} if cfg["tie_word_embeddings"] else {"tok_emb/weight": (vocab_rows, e)}
    shapes["fc/weight"] = (vocab_rows, e)
    shapes["ln_fc/gamma"] = (1, e)
    for i in range(cfg["num_hidden_layers"]):
        b = f"qwen3_block_{i}/"
        shapes[b + "input_layernorm/gamma"] = (1, e)
        shapes[b + "post_attention_layernorm/gamma"] = (1, e)
        shapes[b + "self_attn/q_linear/weight"] = (h * d, e)
        shapes[b + "self_attn/k_linear/weight"] = (kv * d, e)
        shapes[b + "self_attn/v_linear/weight"] = (kv * d, e)
        shapes[b + "self_attn/out_linear/weight"] = (e, h * d)
        shapes[b + "self_attn/q_norm/gamma"] = (1, d)
        shapes[b + "self_attn/k_norm/gamma"] = (1, d)
        shapes[b + "mlp/w1/weight"] = (inter, e)
        shapes[b + "mlp/w2/weight"] = (e, inter)
        shapes[b + "mlp/w3/weight"] = (inter, e)
    return shapes


def gpt2_tt_shapes(cfg, vocab_rows, context, tied=True):
    """{tt name: (rows, cols)} of a tt-train GPT-2 for a HF config."""
    e = cfg["n_embd"]
    shapes = {} if tied else {"tok_emb/weight": (vocab_rows, e)}
    shapes["fc/weight"] = (vocab_rows, e)
    shapes["pos_emb/weight"] = (context, e)
    shapes["ln_fc/gamma"] = shapes["ln_fc/beta"] = (1, e)
    for i in range(cfg["n_layer"]):
        b = f"gpt_block_{i}/"
        shapes[b + "ln1/gamma"] = shapes[b + "ln1/beta"] = (1, e)
        shapes[b + "ln2/gamma"] = shapes[b + "ln2/beta"] = (1, e)
        shapes[b + "attention/qkv_linear/weight"] = (3 * e, e)
        shapes[b + "attention/qkv_linear/bias"] = (1, 3 * e)
        shapes[b + "attention/out_linear/weight"] = (e, e)
        shapes[b + "attention/out_linear/bias"] = (1, e)
        shapes[b + "mlp/fc1/weight"] = (4 * e, e)
        shapes[b + "mlp/fc1/bias"] = (1, 4 * e)
        shapes[b + "mlp/fc2/weight"] = (e, 4 * e)
        shapes[b + "mlp/fc2/bias"] = (1, e)
    return shapes


def _pack_floats(values, style):
    if style == "float64":
        return msgpack.packb([float(v) for v in values], use_single_float=False)
    # msgpack-c 6.1: integral floats become ints, the rest float32
    items = [int(v) if float(v).is_integer() else float(v) for v in values]
    return msgpack.packb(items, use_single_float=True)


def _map_header(n):
    if n < 16:
        return bytes([0x80 | n])
    if n < 1 << 16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def init_file_bytes(shapes, prefix="llama/llama", seed=0, shape_as="bin", float_style="msgpack-c",
                    variants=None, extra_entries=(), shuffle=True, values=None):
    """A tt-train-like init file: 7 keys per parameter, msgpack-c quirks, keys shuffled; values
    {name: array} gives a parameter's values (else drawn)."""
    variants = dict(DEFAULT_VARIANTS, **(variants or {}))
    rng = np.random.default_rng(seed)
    entries = []
    for name, (rows, cols) in shapes.items():
        full = f"{prefix}/{name}"
        if values is not None and name in values:
            values_of = np.asarray(values[name], dtype=np.float32).reshape(-1)
        elif name.endswith(("gamma",)):
            values_of = np.ones(rows * cols, dtype=np.float32)
        elif name.endswith(("beta", "bias")):
            values_of = np.zeros(rows * cols, dtype=np.float32)
        else:
            values_of = (rng.standard_normal(rows * cols) * 0.02).astype(np.float32)
            values_of[:: max(1, values_of.size // 7)] = 0.0  # the odd exact zero, packed as an int
        dims = np.array([1, 1, rows, cols], dtype="<u4").tobytes()
        if shape_as == "bin":
            shape_value = msgpack.packb([variants["shape"], dims], use_bin_type=True)
        else:
            shape_value = b"\x92" + msgpack.packb(7) + msgpack.packb(dims, use_bin_type=False)
        entries.append((full + "/value/shape", shape_value))
        entries.append((full + "/value/data_type", msgpack.packb([variants["int"], 0])))
        entries.append((full + "/value/layout", msgpack.packb([variants["int"], 1])))
        entries.append((full + "/value/storage_type", msgpack.packb([variants["int"], 1])))
        entries.append((full + "/value/data", b"\x92" + msgpack.packb(variants["floats"])
                        + _pack_floats(values_of, float_style)))
        entries.append((full + "/requires_grads", msgpack.packb([variants["bool"], True])))
        entries.append((full + "/has_grads", msgpack.packb([variants["bool"], False])))
    entries.extend(extra_entries)
    if shuffle:
        random.Random(seed).shuffle(entries)
    body = b"".join(msgpack.packb(k) + v for k, v in entries)
    return _map_header(len(entries)) + body


def training_state_entries(shapes, root, scheduler="identity", lr=3e-4, steps=0, moments="zeros", kahan=False,
                           seed=3):
    """tt-train-style AdamW and scheduler entries (msgpack-c encodings) for parameters shapes under root:
    moments "zeros" (as a fresh state, ints) or "random" (as after training), steps in every counter."""
    rng = np.random.default_rng(seed)
    entries = []
    kinds = ["first_moment", "second_moment"] + (["kahan_compensation"] if kahan else [])
    for kind in kinds:
        for name, (rows, cols) in shapes.items():
            full = f"adamw/{kind}/{root}/{name}"
            values = (np.zeros(rows * cols, np.float32) if moments == "zeros"
                      else (rng.standard_normal(rows * cols) * 1e-3).astype(np.float32))
            dims = np.array([1, 1, rows, cols], dtype="<u4").tobytes()
            entries += [
                (full + "/value/shape", msgpack.packb([12, dims], use_bin_type=True)),
                (full + "/value/data_type", msgpack.packb([2, 0])),
                (full + "/value/layout", msgpack.packb([2, 1])),
                (full + "/value/storage_type", msgpack.packb([2, 1])),
                (full + "/value/data", b"\x92" + msgpack.packb(10) + _pack_floats(values, "msgpack-c")),
                (full + "/requires_grads", msgpack.packb([0, False])),
                (full + "/has_grads", msgpack.packb([0, False])),
            ]
    lr_packed = msgpack.packb(float(np.float32(lr)), use_single_float=True)
    entries.append(("adamw/steps", msgpack.packb([6, steps])))
    if scheduler == "identity":
        entries += [("scheduler/m_last_step", msgpack.packb([6, steps])),
                    ("scheduler/m_last_lr", b"\x92\x03" + lr_packed)]
    else:
        entries += [("scheduler/m_current_step_in_scheduler", msgpack.packb([2, steps])),
                    ("scheduler/m_last_lr", b"\x92\x03" + lr_packed),
                    ("scheduler/m_current_scheduler_index", msgpack.packb([6, 1 if steps else 0])),
                    ("scheduler/current_scheduler/m_last_step", msgpack.packb([6, steps])),
                    ("scheduler/current_scheduler/m_last_lr", b"\x92\x03" + lr_packed)]
    return entries


def read_tt(path):
    """{key: [variant, value]} of a msgpack file, read with msgpack-python."""
    with open(path, "rb") as f:
        return msgpack.unpackb(f.read(), raw=False, strict_map_key=False, unicode_errors="surrogateescape")


def tt_raw_entries(path):
    """[(key, raw bytes of the [variant, value] pair)] in file order, using msgpack-python offsets."""
    data = open(path, "rb").read()
    unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
    unpacker.feed(data)
    count = unpacker.read_map_header()
    out = []
    for _ in range(count):
        key = unpacker.unpack()
        start = unpacker.tell()
        unpacker.skip()
        out.append((key, data[start:unpacker.tell()]))
    return out


def assert_matches_upstream(ours_path, upstream_path):
    """Same keys, order and variants as the upstream output; values equal as float32."""
    ours, upstream = read_tt(ours_path), read_tt(upstream_path)
    assert list(ours) == list(upstream)
    for key, (variant, value) in upstream.items():
        assert ours[key][0] == variant, key
        if key.endswith("/value/data"):
            np.testing.assert_array_equal(np.float32(ours[key][1]), np.float64(value).astype(np.float32), key)
        else:
            assert ours[key][1] == value, key


def tt_tensor(tt, prefix, name):
    """A tt tensor as a 2-D float32 array, shaped by its shape entry."""
    raw = tt[f"{prefix}/{name}/value/shape"][1]
    raw = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    dims = np.frombuffer(raw, dtype="<u4")
    return np.array(tt[f"{prefix}/{name}/value/data"][1], dtype=np.float32).reshape(dims[-2], dims[-1])


# ---------------------------------------------------------------- Hugging Face checkpoints

STORE_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def write_checkpoint(directory, config, tensors, dtype="F32", shards=1):
    """Write config.json and safetensors (sharded with an index when shards > 1).

    Returns the tensors as float32 exactly as stored (after rounding to dtype)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    stored = {k: np.ascontiguousarray(v.astype(STORE_DTYPES[dtype])) for k, v in tensors.items()}
    names = sorted(stored)
    if shards == 1:
        save_file(stored, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            part = names[s::shards]
            file_name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: stored[k] for k in part}, os.path.join(directory, file_name))
            weight_map.update({k: file_name for k in part})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return {k: v.astype(np.float32) for k, v in stored.items()}


def llama_config(vocab=96, hidden=32, layers=2, heads=4, kv_heads=2, inter=48, head_dim=None,
                 tie=False, **extra):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
           "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv_heads, "intermediate_size": inter, "rms_norm_eps": 1e-6,
           "rope_theta": 10000.0, "tie_word_embeddings": tie, "max_position_embeddings": 64}
    if head_dim:
        cfg["head_dim"] = head_dim
    cfg.update(extra)
    return cfg


def llama_tensors(cfg, seed=1, tie=False):
    rng = np.random.default_rng(seed)
    e, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", h)
    d = cfg.get("head_dim") or e // h
    inter, v = cfg["intermediate_size"], cfg["vocab_size"]

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, e), "model.norm.weight": 1 + w(e)}
    if not tie:
        t["lm_head.weight"] = w(v, e)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + w(e)
        t[p + "post_attention_layernorm.weight"] = 1 + w(e)
        t[p + "self_attn.q_proj.weight"] = w(h * d, e)
        t[p + "self_attn.k_proj.weight"] = w(kv * d, e)
        t[p + "self_attn.v_proj.weight"] = w(kv * d, e)
        t[p + "self_attn.o_proj.weight"] = w(e, h * d)
        t[p + "mlp.gate_proj.weight"] = w(inter, e)
        t[p + "mlp.up_proj.weight"] = w(inter, e)
        t[p + "mlp.down_proj.weight"] = w(e, inter)
    return t


def qwen3_config(vocab=96, hidden=64, layers=2, heads=4, kv_heads=2, head_dim=32, inter=96, tie=False, **extra):
    """A Qwen3 config.json as transformers saves one (head_dim given: Qwen3's is not hidden / heads)."""
    cfg = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": vocab, "hidden_size": hidden,
           "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
           "head_dim": head_dim, "intermediate_size": inter, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
           "rope_scaling": None, "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
           "max_window_layers": layers, "tie_word_embeddings": tie, "max_position_embeddings": 64}
    cfg.update(extra)
    return cfg


def qwen3_tensors(cfg, seed=3):
    """Random Qwen3 weights: a Llama's plus q/k norm weights away from 1, so that a wrong order shows."""
    t = llama_tensors(cfg, seed, tie=cfg["tie_word_embeddings"])
    rng = np.random.default_rng(seed + 100)
    for i in range(cfg["num_hidden_layers"]):
        for norm in ("q_norm", "k_norm"):
            t[f"model.layers.{i}.self_attn.{norm}.weight"] = \
                (1 + rng.standard_normal(cfg["head_dim"]) * 0.2).astype(np.float32)
    return t


def gpt2_config(vocab=100, embd=32, layers=2, heads=4, positions=48):
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab, "n_embd": embd,
            "n_layer": layers, "n_head": heads, "n_positions": positions, "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True}


def gpt2_tensors(cfg, seed=2, prefix="transformer.", lm_head=False, mask_buffers=False):
    rng = np.random.default_rng(seed)
    e, v = cfg["n_embd"], cfg["vocab_size"]

    def w(*shape):
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    t = {prefix + "wte.weight": w(v, e), prefix + "wpe.weight": w(cfg["n_positions"], e),
         prefix + "ln_f.weight": 1 + w(e), prefix + "ln_f.bias": w(e)}
    if lm_head:
        t["lm_head.weight"] = w(v, e)
    for i in range(cfg["n_layer"]):
        p = f"{prefix}h.{i}."
        t[p + "ln_1.weight"], t[p + "ln_1.bias"] = 1 + w(e), w(e)
        t[p + "ln_2.weight"], t[p + "ln_2.bias"] = 1 + w(e), w(e)
        t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"] = w(e, 3 * e), w(3 * e)
        t[p + "attn.c_proj.weight"], t[p + "attn.c_proj.bias"] = w(e, e), w(e)
        t[p + "mlp.c_fc.weight"], t[p + "mlp.c_fc.bias"] = w(e, 4 * e), w(4 * e)
        t[p + "mlp.c_proj.weight"], t[p + "mlp.c_proj.bias"] = w(4 * e, e), w(e)
        if mask_buffers:
            t[p + "attn.bias"] = np.tril(np.ones((cfg["n_positions"],) * 2, dtype=np.float32))
            t[p + "attn.masked_bias"] = np.array([-1e4], dtype=np.float32)
    return t


# ---------------------------------------------------------------- reference mapping (loops, not reshapes)

def interleave_heads(w, n_heads):
    """New row 2i = old row i, new row 2i+1 = old row D/2 + i, within each head."""
    d = w.shape[0] // n_heads
    out = np.empty_like(w)
    for head in range(n_heads):
        for i in range(d // 2):
            out[head * d + 2 * i] = w[head * d + i]
            out[head * d + 2 * i + 1] = w[head * d + d // 2 + i]
    return out


def pad_rows(w, rows):
    out = np.zeros((rows, w.shape[1]), dtype=np.float32)
    out[: w.shape[0]] = w
    return out


# The tensors of a Llama or Qwen3 outside its blocks: (checkpoint tensors, tt rows) -> tt values.
ROPE_MODEL_ENDS = {
    "tok_emb/weight": lambda t, rows: pad_rows(t["model.embed_tokens.weight"], rows),
    "fc/weight": lambda t, rows: pad_rows(t.get("lm_head.weight", t["model.embed_tokens.weight"]), rows),
    "ln_fc/gamma": lambda t, rows: t["model.norm.weight"][None],
}


def expected_llama(cfg, t, shapes, meta_style=False):
    h = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", h)

    def rope(w, n):
        return w if meta_style else interleave_heads(w, n)

    out = {}
    for name, (rows, cols) in shapes.items():
        if name in ROPE_MODEL_ENDS:
            out[name] = ROPE_MODEL_ENDS[name](t, rows)
        else:
            i = int(name.split("/")[0].split("_")[-1])
            p = f"model.layers.{i}."
            leaf = name.split("/", 1)[1]
            out[name] = {
                "attention_norm/gamma": lambda: t[p + "input_layernorm.weight"][None],
                "mlp_norm/gamma": lambda: t[p + "post_attention_layernorm.weight"][None],
                "attention/q_linear/weight": lambda: rope(t[p + "self_attn.q_proj.weight"], h),
                "attention/kv_linear/weight": lambda: np.concatenate(
                    [rope(t[p + "self_attn.k_proj.weight"], kv), t[p + "self_attn.v_proj.weight"]]),
                "attention/out_linear/weight": lambda: t[p + "self_attn.o_proj.weight"],
                "mlp/w1/weight": lambda: t[p + "mlp.gate_proj.weight"],
                "mlp/w2/weight": lambda: t[p + "mlp.down_proj.weight"],
                "mlp/w3/weight": lambda: t[p + "mlp.up_proj.weight"],
            }[leaf]()
    return out


def interleave_vector(g):
    """A q/k norm vector in tt-train's order: new 2i = old i, new 2i+1 = old D/2 + i."""
    d = len(g)
    return np.array([g[i // 2] if i % 2 == 0 else g[d // 2 + i // 2] for i in range(d)], dtype=np.float32)


def expected_qwen3(cfg, t, shapes, permute_rows=True, permute_norms=True):
    """{tt name: values} as tt-train's Qwen3 loader (qwen3.cpp) fills them: q/k rows interleaved per head
    (q by heads, k by kv heads), q/k norms interleaved, vocabulary padded (with zeros here); without
    permute_rows or permute_norms, those left in Hugging Face order (a wrong conversion)."""
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    sources = {"input_layernorm/gamma": "input_layernorm.weight",
               "post_attention_layernorm/gamma": "post_attention_layernorm.weight",
               "self_attn/v_linear/weight": "self_attn.v_proj.weight",
               "self_attn/out_linear/weight": "self_attn.o_proj.weight", "mlp/w1/weight": "mlp.gate_proj.weight",
               "mlp/w2/weight": "mlp.down_proj.weight", "mlp/w3/weight": "mlp.up_proj.weight"}
    out = {}
    for name, (rows, cols) in shapes.items():
        if name in ROPE_MODEL_ENDS:
            out[name] = ROPE_MODEL_ENDS[name](t, rows)
        else:
            block, leaf = name.split("/", 1)
            p = f"model.layers.{int(block.split('_')[-1])}."
            if leaf == "self_attn/q_linear/weight":
                w = t[p + "self_attn.q_proj.weight"]
                out[name] = interleave_heads(w, h) if permute_rows else w
            elif leaf == "self_attn/k_linear/weight":
                w = t[p + "self_attn.k_proj.weight"]
                out[name] = interleave_heads(w, kv) if permute_rows else w
            elif leaf in ("self_attn/q_norm/gamma", "self_attn/k_norm/gamma"):
                g = t[p + f"self_attn.{leaf.split('/')[1]}.weight"]
                out[name] = (interleave_vector(g) if permute_norms else g)[None]
            else:
                w = t[p + sources[leaf]]
                out[name] = w[None] if w.ndim == 1 else w
    return out


def expected_gpt2(t, shapes):
    t = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in t.items()}
    simple = {"ln_fc/gamma": "ln_f.weight", "ln_fc/beta": "ln_f.bias"}
    out = {}
    for name, (rows, cols) in shapes.items():
        if name == "tok_emb/weight":
            out[name] = pad_rows(t["wte.weight"], rows)
        elif name == "fc/weight":
            out[name] = pad_rows(t.get("lm_head.weight", t["wte.weight"]), rows)
        elif name == "pos_emb/weight":
            out[name] = t["wpe.weight"][:rows]
        elif name in simple:
            out[name] = t[simple[name]][None]
        else:
            i = int(name.split("/")[0].split("_")[-1])
            leaf = name.split("/", 1)[1]
            src = {"ln1/gamma": "ln_1.weight", "ln1/beta": "ln_1.bias", "ln2/gamma": "ln_2.weight",
                   "ln2/beta": "ln_2.bias", "attention/qkv_linear/weight": "attn.c_attn.weight",
                   "attention/qkv_linear/bias": "attn.c_attn.bias", "attention/out_linear/weight": "attn.c_proj.weight",
                   "attention/out_linear/bias": "attn.c_proj.bias", "mlp/fc1/weight": "mlp.c_fc.weight",
                   "mlp/fc1/bias": "mlp.c_fc.bias", "mlp/fc2/weight": "mlp.c_proj.weight",
                   "mlp/fc2/bias": "mlp.c_proj.bias"}[leaf]
            w = t[f"h.{i}.{src}"]
            out[name] = w.T.copy() if w.ndim == 2 else w[None]
    return out


# ---------------------------------------------------------------- forward passes (float64 numpy)

def _rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _attention(q, k, v, n_heads, n_kv):
    seq, d = q.shape[1], q.shape[2]
    group = n_heads // n_kv
    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    outs = []
    for head in range(n_heads):
        kk, vv = k[head // group], v[head // group]
        scores = q[head] @ kk.T / math.sqrt(d) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        outs.append((scores / scores.sum(-1, keepdims=True)) @ vv)
    return np.concatenate(outs, axis=-1)


def _rope_angles(seq, d, theta):
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(np.arange(seq), inv)
    return np.cos(ang), np.sin(ang)


def rope_theta(cfg):
    params = cfg.get("rope_parameters") or {}
    return params.get("rope_theta", cfg.get("rope_theta", 10000.0))


def llama_forward_tt(cfg, w, ids):
    """tt-train style: fused kv_linear, interleaved RoPE on adjacent pairs (2i, 2i+1)."""
    h = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", h)
    d = cfg.get("head_dim") or cfg["hidden_size"] // h
    eps = cfg.get("rms_norm_eps", 1e-6)
    cos, sin = _rope_angles(len(ids), d, rope_theta(cfg))
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = w.get("tok_emb/weight", w["fc/weight"])[ids]

    def rope(t):  # t: [heads, seq, d]
        even, odd = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    for i in range(cfg["num_hidden_layers"]):
        b = f"llama_block_{i}/"
        a = _rms(x, w[b + "attention_norm/gamma"][0], eps)
        q = (a @ w[b + "attention/q_linear/weight"].T).reshape(len(ids), h, d).transpose(1, 0, 2)
        kvx = a @ w[b + "attention/kv_linear/weight"].T
        k = kvx[:, : kv * d].reshape(len(ids), kv, d).transpose(1, 0, 2)
        v = kvx[:, kv * d:].reshape(len(ids), kv, d).transpose(1, 0, 2)
        x = x + _attention(rope(q), rope(k), v, h, kv) @ w[b + "attention/out_linear/weight"].T
        m = _rms(x, w[b + "mlp_norm/gamma"][0], eps)
        gate = m @ w[b + "mlp/w1/weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (m @ w[b + "mlp/w3/weight"].T)) @ w[b + "mlp/w2/weight"].T
    return _rms(x, w["ln_fc/gamma"][0], eps) @ w["fc/weight"].T


def llama_forward_hf(cfg, t, ids):
    """Hugging Face style on the source tensors: separate q/k/v, rotate_half RoPE on (i, i + D/2)."""
    h = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", h)
    d = cfg.get("head_dim") or cfg["hidden_size"] // h
    eps = cfg.get("rms_norm_eps", 1e-6)
    cos, sin = _rope_angles(len(ids), d, rope_theta(cfg))
    cos, sin = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
    t = {k: v.astype(np.float64) for k, v in t.items()}

    def rope(x):
        rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
        return x * cos + rotated * sin

    x = t["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = _rms(x, t[p + "input_layernorm.weight"], eps)
        q = (a @ t[p + "self_attn.q_proj.weight"].T).reshape(len(ids), h, d).transpose(1, 0, 2)
        k = (a @ t[p + "self_attn.k_proj.weight"].T).reshape(len(ids), kv, d).transpose(1, 0, 2)
        v = (a @ t[p + "self_attn.v_proj.weight"].T).reshape(len(ids), kv, d).transpose(1, 0, 2)
        x = x + _attention(rope(q), rope(k), v, h, kv) @ t[p + "self_attn.o_proj.weight"].T
        m = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        gate = m @ t[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (m @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return _rms(x, t["model.norm.weight"], eps) @ head.T


def _layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def gpt2_forward_tt(cfg, w, ids):
    """tt-train style GPT-2: fused qkv_linear with [out, in] weights, gelu_new MLP."""
    e, h = cfg["n_embd"], cfg["n_head"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    w = {k: v.astype(np.float64) for k, v in w.items()}
    x = w.get("tok_emb/weight", w["fc/weight"])[ids] + w["pos_emb/weight"][: len(ids)]
    for i in range(cfg["n_layer"]):
        b = f"gpt_block_{i}/"
        a = _layer_norm(x, w[b + "ln1/gamma"][0], w[b + "ln1/beta"][0], eps)
        qkv = a @ w[b + "attention/qkv_linear/weight"].T + w[b + "attention/qkv_linear/bias"][0]
        q, k, v = (qkv[:, j * e:(j + 1) * e].reshape(len(ids), h, e // h).transpose(1, 0, 2) for j in range(3))
        att = _attention(q, k, v, h, h)
        x = x + att @ w[b + "attention/out_linear/weight"].T + w[b + "attention/out_linear/bias"][0]
        m = _layer_norm(x, w[b + "ln2/gamma"][0], w[b + "ln2/beta"][0], eps)
        f = m @ w[b + "mlp/fc1/weight"].T + w[b + "mlp/fc1/bias"][0]
        f = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f ** 3)))
        x = x + f @ w[b + "mlp/fc2/weight"].T + w[b + "mlp/fc2/bias"][0]
    return _layer_norm(x, w["ln_fc/gamma"][0], w["ln_fc/beta"][0], eps) @ w["fc/weight"].T


def rel_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
