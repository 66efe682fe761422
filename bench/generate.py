"""Deterministic synthetic benchmark inputs: a Hugging Face checkpoint (safetensors,
sharded or not, F32/BF16) and, for the families msgpack has, a matching tt-train init file
(msgpack-c style: weights as float32, gammas and biases as ints, keys shuffled), both
written streaming. Qwen3 cases get the checkpoint only (Qwen3 is written as directories), and so
do llama3.2-3b-bf16 and gpt2-xl (export cases: their tt side is a directory built from config.json)
and DeepSeek (written as ttml checkpoints).

    python bench/generate.py llama-155m --out bench/out
"""
import argparse
import json
import os
import random
import struct

import numpy as np

CASES = {
    "llama-155m": dict(family="llama", hidden=1024, layers=8, heads=16, kv_heads=4, inter=2816,
                       vocab=32000, dtype="F32", tied=False, shards=1),
    "tinyllama-1.1b": dict(family="llama", hidden=2048, layers=22, heads=32, kv_heads=4, inter=5632,
                           vocab=32000, dtype="F32", tied=False, shards=1),
    "llama3.2-1b-bf16": dict(family="llama", hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192,
                             vocab=128256, dtype="BF16", tied=True, shards=2),
    "qwen3-0.6b-bf16": dict(family="qwen3", hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128,
                            inter=3072, vocab=151936, dtype="BF16", tied=True, shards=1),
    # export only: its init file (16 GB of msgpack) is not written; the tt side is a directory built from config.json
    # (no ttml stream: the tests' imitation of ttml's writer holds the whole model in float32, about 26 GB)
    "llama3.2-3b-bf16": dict(family="llama", hidden=3072, layers=28, heads=24, kv_heads=8, inter=8192,
                             vocab=128256, dtype="BF16", tied=True, shards=2, init=False, ttml=False),
    # export only, as llama3.2-3b-bf16: GPT-2 at a size where start-up does not hide the cost per byte
    "gpt2-xl": dict(family="gpt2", hidden=1600, layers=48, heads=25, vocab=50257, positions=1024,
                    dtype="F32", tied=True, shards=2, init=False),
    "gpt2-medium": dict(family="gpt2", hidden=1024, layers=24, heads=16, vocab=50257, positions=1024,
                        dtype="F32", tied=True, shards=1),
    # DeepSeek-V2-Lite's layer shapes (MLA without q LoRA, 64 experts of 1408, 2 shared), its dense first
    # layer and one mixture-of-experts layer
    "deepseek-v2-lite-bf16": dict(family="deepseek", hidden=2048, layers=2, heads=16, inter=10944, moe_inter=1408,
                                  experts=64, shared=2, kv_rank=512, nope=128, rope=64, v_dim=128, vocab=102400,
                                  dtype="BF16", tied=False, shards=2, init=False),
}
BLOCK = 1 << 20


def padded(vocab):
    return (vocab + 31) // 32 * 32


def llama_tensors(c):
    e, d = c["hidden"], c["hidden"] // c["heads"]
    hf = [("model.embed_tokens.weight", (c["vocab"], e))]
    tt = [] if c["tied"] else [("tok_emb/weight", (padded(c["vocab"]), e))]
    tt += [("fc/weight", (padded(c["vocab"]), e)), ("ln_fc/gamma", (1, e))]
    if not c["tied"]:
        hf.append(("lm_head.weight", (c["vocab"], e)))
    hf.append(("model.norm.weight", (e,)))
    for i in range(c["layers"]):
        p, b = f"model.layers.{i}.", f"llama_block_{i}/"
        hf += [(p + "input_layernorm.weight", (e,)), (p + "post_attention_layernorm.weight", (e,)),
               (p + "self_attn.q_proj.weight", (c["heads"] * d, e)),
               (p + "self_attn.k_proj.weight", (c["kv_heads"] * d, e)),
               (p + "self_attn.v_proj.weight", (c["kv_heads"] * d, e)),
               (p + "self_attn.o_proj.weight", (e, c["heads"] * d)),
               (p + "mlp.gate_proj.weight", (c["inter"], e)), (p + "mlp.up_proj.weight", (c["inter"], e)),
               (p + "mlp.down_proj.weight", (e, c["inter"]))]
        tt += [(b + "attention_norm/gamma", (1, e)), (b + "mlp_norm/gamma", (1, e)),
               (b + "attention/q_linear/weight", (c["heads"] * d, e)),
               (b + "attention/kv_linear/weight", (2 * c["kv_heads"] * d, e)),
               (b + "attention/out_linear/weight", (e, c["heads"] * d)),
               (b + "mlp/w1/weight", (c["inter"], e)), (b + "mlp/w2/weight", (e, c["inter"])),
               (b + "mlp/w3/weight", (c["inter"], e))]
    return hf, tt, "llama/llama"


def qwen3_tensors(c):
    """The checkpoint's tensors (no init file: Qwen3 is converted into directories built from config.json)."""
    e, d = c["hidden"], c["head_dim"]
    hf = [("model.embed_tokens.weight", (c["vocab"], e))]
    if not c["tied"]:
        hf.append(("lm_head.weight", (c["vocab"], e)))
    hf.append(("model.norm.weight", (e,)))
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        hf += [(p + "input_layernorm.weight", (e,)), (p + "post_attention_layernorm.weight", (e,)),
               (p + "self_attn.q_proj.weight", (c["heads"] * d, e)),
               (p + "self_attn.k_proj.weight", (c["kv_heads"] * d, e)),
               (p + "self_attn.v_proj.weight", (c["kv_heads"] * d, e)),
               (p + "self_attn.o_proj.weight", (e, c["heads"] * d)),
               (p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,)),
               (p + "mlp.gate_proj.weight", (c["inter"], e)), (p + "mlp.up_proj.weight", (c["inter"], e)),
               (p + "mlp.down_proj.weight", (e, c["inter"]))]
    return hf, None, None


def gpt2_tensors(c):
    e = c["hidden"]
    hf = [("transformer.wte.weight", (c["vocab"], e)), ("transformer.wpe.weight", (c["positions"], e)),
          ("transformer.ln_f.weight", (e,)), ("transformer.ln_f.bias", (e,))]
    tt = [("fc/weight", (padded(c["vocab"]), e)), ("pos_emb/weight", (c["positions"], e)),
          ("ln_fc/gamma", (1, e)), ("ln_fc/beta", (1, e))]
    for i in range(c["layers"]):
        p, b = f"transformer.h.{i}.", f"gpt_block_{i}/"
        hf += [(p + "ln_1.weight", (e,)), (p + "ln_1.bias", (e,)), (p + "ln_2.weight", (e,)), (p + "ln_2.bias", (e,)),
               (p + "attn.c_attn.weight", (e, 3 * e)), (p + "attn.c_attn.bias", (3 * e,)),
               (p + "attn.c_proj.weight", (e, e)), (p + "attn.c_proj.bias", (e,)),
               (p + "mlp.c_fc.weight", (e, 4 * e)), (p + "mlp.c_fc.bias", (4 * e,)),
               (p + "mlp.c_proj.weight", (4 * e, e)), (p + "mlp.c_proj.bias", (e,))]
        tt += [(b + "ln1/gamma", (1, e)), (b + "ln1/beta", (1, e)), (b + "ln2/gamma", (1, e)), (b + "ln2/beta", (1, e)),
               (b + "attention/qkv_linear/weight", (3 * e, e)), (b + "attention/qkv_linear/bias", (1, 3 * e)),
               (b + "attention/out_linear/weight", (e, e)), (b + "attention/out_linear/bias", (1, e)),
               (b + "mlp/fc1/weight", (4 * e, e)), (b + "mlp/fc1/bias", (1, 4 * e)),
               (b + "mlp/fc2/weight", (e, 4 * e)), (b + "mlp/fc2/bias", (1, e))]
    return hf, tt, "transformer/transformer"


def deepseek_tensors(c):
    """The checkpoint's tensors (DeepSeek is written as ttml checkpoints built from config.json)."""
    e, h = c["hidden"], c["heads"]
    hf = [("model.embed_tokens.weight", (c["vocab"], e)), ("lm_head.weight", (c["vocab"], e)), ("model.norm.weight", (e,))]
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        hf += [(p + "input_layernorm.weight", (e,)), (p + "post_attention_layernorm.weight", (e,)),
               (p + "self_attn.q_proj.weight", (h * (c["nope"] + c["rope"]), e)),
               (p + "self_attn.kv_a_proj_with_mqa.weight", (c["kv_rank"] + c["rope"], e)),
               (p + "self_attn.kv_a_layernorm.weight", (c["kv_rank"],)),
               (p + "self_attn.kv_b_proj.weight", (h * (c["nope"] + c["v_dim"]), c["kv_rank"])),
               (p + "self_attn.o_proj.weight", (e, h * c["v_dim"]))]
        modules = [("mlp.", c["inter"])] if i == 0 else (
            [(f"mlp.experts.{x}.", c["moe_inter"]) for x in range(c["experts"])]
            + [("mlp.shared_experts.", c["moe_inter"] * c["shared"])])
        if i:
            hf.append((p + "mlp.gate.weight", (c["experts"], e)))
        for module, width in modules:
            hf += [(p + module + "gate_proj.weight", (width, e)), (p + module + "up_proj.weight", (width, e)),
                   (p + module + "down_proj.weight", (e, width))]
    return hf, None, None


def values(base, n, offset):
    """n float32 values cycled from a fixed random block, starting at offset."""
    return np.resize(np.roll(base, -offset), n)


def write_safetensors(path, tensors, base, dtype, first_offset):
    itemsize = 4 if dtype == "F32" else 2
    header, pos = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        size = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + size]}
        pos += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for k, (name, shape) in enumerate(tensors):
            n = int(np.prod(shape))
            for start in range(0, n, 1 << 24):
                chunk = values(base, min(1 << 24, n - start), (first_offset + k * 7919 + start) % base.size)
                f.write((chunk.view(np.uint32) >> 16).astype(np.uint16).tobytes() if dtype == "BF16"
                        else chunk.tobytes())


def encode_f32(chunk):
    out = np.empty((chunk.size, 5), np.uint8)
    out[:, 0] = 0xCA
    out[:, 1:] = chunk.astype(">f4").view(np.uint8).reshape(-1, 4)
    return out.tobytes()


def write_init(path, params, prefix, base, seed):
    import msgpack

    keys = []
    for name, shape in params:
        full = f"{prefix}/{name}"
        keys += [(full + "/value/shape", msgpack.packb([12, struct.pack("<4I", 1, 1, *shape)])),
                 (full + "/value/data_type", msgpack.packb([2, 0])), (full + "/value/layout", msgpack.packb([2, 1])),
                 (full + "/value/storage_type", msgpack.packb([2, 1])), (full + "/value/data", (name, shape)),
                 (full + "/requires_grads", msgpack.packb([0, True])), (full + "/has_grads", msgpack.packb([0, False]))]
    random.Random(seed).shuffle(keys)
    with open(path, "wb") as f:
        f.write(b"\xde" + len(keys).to_bytes(2, "big"))
        for key, value in keys:
            f.write(msgpack.packb(key))
            if isinstance(value, bytes):
                f.write(value)
                continue
            name, shape = value
            n = shape[0] * shape[1]
            f.write(b"\x92\x0a" + msgpack.Packer().pack_array_header(n))
            if name.endswith(("gamma", "beta", "bias")):
                f.write((b"\x01" if name.endswith("gamma") else b"\x00") * n)
                continue
            for start in range(0, n, 1 << 22):
                f.write(encode_f32(values(base, min(1 << 22, n - start), (start + n) % base.size) * np.float32(0.1)))


def generate(case, out_dir):
    """Write OUT/CASE/{checkpoint/, init.msgpack} unless already complete; returns the case folder."""
    c = CASES[case]
    folder = os.path.join(out_dir, case)
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        return folder
    os.makedirs(os.path.join(folder, "checkpoint"), exist_ok=True)
    base = (np.random.default_rng(1234).standard_normal(BLOCK) * 0.02).astype(np.float32)
    hf, tt, prefix = {"llama": llama_tensors, "qwen3": qwen3_tensors, "gpt2": gpt2_tensors,
                      "deepseek": deepseek_tensors}[c["family"]](c)
    if c["family"] == "deepseek":
        config = {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"], "hidden_size": c["hidden"],
                  "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
                  "num_key_value_heads": c["heads"], "intermediate_size": c["inter"],
                  "moe_intermediate_size": c["moe_inter"], "n_routed_experts": c["experts"],
                  "n_shared_experts": c["shared"], "num_experts_per_tok": 6, "first_k_dense_replace": 1,
                  "moe_layer_freq": 1, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
                  "routed_scaling_factor": 1.0, "q_lora_rank": None, "kv_lora_rank": c["kv_rank"],
                  "qk_nope_head_dim": c["nope"], "qk_rope_head_dim": c["rope"], "v_head_dim": c["v_dim"],
                  "vocab_size": c["vocab"], "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
                  "rope_theta": 10000.0, "max_position_embeddings": 4096}
    elif c["family"] == "qwen3":
        config = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": c["hidden"],
                  "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
                  "num_key_value_heads": c["kv_heads"], "head_dim": c["head_dim"], "intermediate_size": c["inter"],
                  "vocab_size": c["vocab"], "tie_word_embeddings": c["tied"], "rms_norm_eps": 1e-6,
                  "rope_theta": 1000000.0, "max_position_embeddings": 40960}
    elif c["family"] == "llama":
        config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": c["hidden"],
                  "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
                  "num_key_value_heads": c["kv_heads"], "intermediate_size": c["inter"], "vocab_size": c["vocab"],
                  "tie_word_embeddings": c["tied"], "rms_norm_eps": 1e-5}
    else:
        config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": c["hidden"],
                  "n_layer": c["layers"], "n_head": c["heads"], "n_positions": c["positions"],
                  "vocab_size": c["vocab"]}
    with open(os.path.join(folder, "checkpoint", "config.json"), "w") as f:
        json.dump(config, f)
    if c["shards"] == 1:
        write_safetensors(os.path.join(folder, "checkpoint", "model.safetensors"), hf, base, c["dtype"], 0)
    else:
        weight_map = {}
        for s in range(c["shards"]):
            part = hf[s::c["shards"]]
            name = f"model-{s + 1:05d}-of-{c['shards']:05d}.safetensors"
            write_safetensors(os.path.join(folder, "checkpoint", name), part, base, c["dtype"], s)
            weight_map.update({t: name for t, _ in part})
        with open(os.path.join(folder, "checkpoint", "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    if tt is not None and c.get("init", True):
        write_init(os.path.join(folder, "init.msgpack"), tt, prefix, base, seed=len(case))
    open(done, "w").close()
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"cases to write (default: all of {', '.join(CASES)})")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = parser.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    for case in args.cases or CASES:
        print(generate(case, args.out))


if __name__ == "__main__":
    main()
