"""LoRA checkpoints built from the tests' trained models, in every layout tt-train holds them.

Adapters are drawn here in Hugging Face's terms (one A [r, in] and B [out, r] per projection,
as PEFT holds them; the projections a tt-train linear fuses share its A) and placed the way
tt-train keeps them: B's q/k rows interleaved for RoPE and a fused linear's parts stacked; the
Python side as lora_A [1, 1, r, in] / lora_B [1, 1, out, r] under LoraModel/model/..., the C++
side as lora_a [1, 1, in, r] / lora_b [1, 1, r, out] in directories and msgpack files. The
expected adapter folder and merged weights follow from the same draw, apart from ttconv.
"""
import numpy as np

import support
import ttdir_support
import ttml_support as ts

# tt-train linear (in its scheme) -> the projections it holds, in row order
LINEARS = {
    ("llama", "unfused"): {"attention/q_linear": ("q",), "attention/kv_linear": ("k", "v"),
                           "attention/out_linear": ("o",), "mlp/w1": ("gate",), "mlp/w3": ("up",),
                           "mlp/w2": ("down",)},
    ("llama", "fused"): {"attention/qkv_linear": ("q", "k", "v"), "attention/out_linear": ("o",),
                         "mlp/w_gate_up": ("gate", "up"), "mlp/w2": ("down",)},
    ("qwen3", "unfused"): {"self_attn/q_proj": ("q",), "self_attn/k_proj": ("k",), "self_attn/v_proj": ("v",),
                           "self_attn/o_proj": ("o",), "mlp/gate_proj": ("gate",), "mlp/up_proj": ("up",),
                           "mlp/down_proj": ("down",)},
    ("qwen3", "hf"): {"self_attn/q_proj": ("q",), "self_attn/k_proj": ("k",), "self_attn/v_proj": ("v",),
                      "self_attn/o_proj": ("o",), "mlp/gate_proj": ("gate",), "mlp/up_proj": ("up",),
                      "mlp/down_proj": ("down",)},
    ("qwen3", "kv"): {"self_attn/q_proj": ("q",), "self_attn/kv_proj": ("k", "v"), "self_attn/o_proj": ("o",),
                      "mlp/gate_proj": ("gate",), "mlp/up_proj": ("up",), "mlp/down_proj": ("down",)},
    # the C++ side's names (checkpoint directories and msgpack)
    ("llama", "c++"): {"attention/q_linear": ("q",), "attention/kv_linear": ("k", "v"),
                       "attention/out_linear": ("o",), "mlp/w1": ("gate",), "mlp/w3": ("up",), "mlp/w2": ("down",)},
    ("qwen3", "c++"): {"self_attn/q_linear": ("q",), "self_attn/k_linear": ("k",), "self_attn/v_linear": ("v",),
                       "self_attn/out_linear": ("o",), "mlp/w1": ("gate",), "mlp/w3": ("up",), "mlp/w2": ("down",)},
}
PROJECTIONS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def draw(family, scheme, cfg, t, rank, targets=None, seed=11):
    """(tt adapters {(layer, linear): (A [r, in], B in tt row order [out, r])}, PEFT adapters
    {module: (A, B)}) for every linear of the scheme (or those whose name contains one of targets)."""
    rng = np.random.default_rng(seed)
    heads = {"q": cfg["num_attention_heads"], "k": cfg["num_key_value_heads"]}
    tt, peft = {}, {}
    for i in range(cfg["num_hidden_layers"]):
        for linear, parts in LINEARS[(family, scheme)].items():
            if targets and not any(name in linear for name in targets):
                continue
            module = f"model.layers.{i}."
            weight = t[module + PROJECTIONS[parts[0]] + ".weight"]
            a = (rng.normal(size=(rank, weight.shape[1])) * 0.1).astype(np.float32)
            rows = []
            for part in parts:
                out = t[module + PROJECTIONS[part] + ".weight"].shape[0]
                b = (rng.normal(size=(out, rank)) * 0.1).astype(np.float32)
                peft[module + PROJECTIONS[part]] = (a, b)
                rows.append(support.interleave_heads(b, heads[part]) if part in heads else b)
            tt[(i, linear)] = (a, np.concatenate(rows))
    return tt, peft


def merged(t, peft, scale):
    """The Hugging Face tensors with every adapter merged: W + scale B A (float32)."""
    out = dict(t)
    for module, (a, b) in peft.items():
        out[module + ".weight"] = (t[module + ".weight"] + np.float32(scale) * (b @ a)).astype(np.float32)
    return out


def ttml_lora_model(base, tt_adapters, root, class_name=False, blocks="blocks"):
    """A LoRA-wrapped ttml model: base {root/...: 4-D} renamed under LoraModel/model/ (with the model's
    class name kept when class_name), lora_A/lora_B after each adapted weight (blocks: where the
    layers lie, model/layers in Qwen3's names that mirror Hugging Face's)."""
    out = {}
    for name, values in base.items():
        out[name] = values
        for (i, linear), (a, b) in tt_adapters.items():
            if name == f"{root}/{blocks}/{i}/{linear}/weight":
                out[f"{root}/{blocks}/{i}/{linear}/lora_A"] = ts.four_d(a)
                out[f"{root}/{blocks}/{i}/{linear}/lora_B"] = ts.four_d(b)
    head = "LoraModel/model/" + (root + "/" if class_name else "")
    return {head + name[len(root) + 1:]: values for name, values in out.items()}


def cpp_tensors(family, cfg, t, tt_adapters):
    """{tt name: 2-D} of a C++-side LoRA model: the converted weights plus lora_a = A^T, lora_b = B^T."""
    if family == "llama":
        named = support.expected_llama(cfg, t, support.llama_tt_shapes(cfg, 416))
        block = "llama_block"
    else:
        named = support.expected_qwen3(cfg, t, support.qwen3_tt_shapes(cfg, 416))
        block = "qwen3_block"
    for (i, linear), (a, b) in tt_adapters.items():
        named[f"{block}_{i}/{linear}/lora_a"] = a.T.copy()
        named[f"{block}_{i}/{linear}/lora_b"] = b.T.copy()
    return named


def write_cpp_dir(path, family, cfg, t, tt_adapters, dtype="f32"):
    named = cpp_tensors(family, cfg, t, tt_adapters)
    return ttdir_support.write_dir(path, ttdir_support.as_tt_tensors(named, f"{family}/{family}"), dtype=dtype)


def write_cpp_msgpack(path, cfg, t, tt_adapters):
    named = cpp_tensors("llama", cfg, t, tt_adapters)
    shapes = {name: np.asarray(v).reshape(-1, np.asarray(v).shape[-1]).shape for name, v in named.items()}
    path.write_bytes(support.init_file_bytes(shapes, prefix="llama/llama", values=named))
    return path


def assert_peft_folder(folder, adapters, rank, alpha):
    """folder is a PEFT adapter folder holding exactly adapters {module: (A, B)}, with their rank and alpha
    and target_modules naming each module by its full path."""
    import json
    import os

    from test_export_hf import raw_safetensors

    got = {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).reshape(shape) for name, (dtype, shape, data)
           in raw_safetensors(os.path.join(folder, "adapter_model.safetensors")).items()}
    want = {}
    for module, (a, b) in adapters.items():
        want[f"base_model.model.{module}.lora_A.weight"], want[f"base_model.model.{module}.lora_B.weight"] = a, b
    assert set(got) == set(want)
    for name, values in want.items():
        assert np.array_equal(got[name], values), name
    with open(os.path.join(folder, "adapter_config.json")) as f:
        config = json.load(f)
    assert config["r"] == rank and config["lora_alpha"] == alpha and config["target_modules"] == sorted(adapters)

