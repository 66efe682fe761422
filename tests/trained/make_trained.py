"""Train the tiny Llama, GPT-2 and Qwen3 checkpoints that the check tests use, on tests/trained/corpus.txt.

    python tests/trained/make_trained.py [NAME ...]  # about a minute on 2 cores; rewrites the folders named
                                                     # (default: all of llama gpt2 qwen3 qwen3-tied)

A byte-level BPE tokenizer is trained on the corpus, then each model with AdamW in jax
for a few hundred steps. The forward passes here follow transformers' conventions
(rotate-half RoPE, Conv1D [in, out] weights, tanh GELU, Qwen3's q/k norms per head before
RoPE) and are written apart from ttconv's. Every folder gets config.json, model.safetensors
(float32; qwen3-tied: bfloat16, tied embeddings), tokenizer.json, and expected.json with
the loss this script computes on the check's built-in sample (from the weights as stored),
which `ttconv check` must reproduce. The Qwen3 models have head_dim 32, not hidden / heads = 16.
"""
import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import ml_dtypes
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from ttconv.hf.tokenizer import SAMPLE_TEXT  # noqa: E402

jax.config.update("jax_platforms", "cpu")
CONTEXT, WIDTH, LAYERS, HEADS = 128, 64, 2, 4


def train_tokenizer(text):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([text], trainer)
    return tokenizer


def rms(x, g, eps=1e-5):
    return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * g


def attend(q, k, v):
    """q, k, v: [batch, heads, T, d] with k/v already repeated to the query heads."""
    t = q.shape[2]
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    s = jnp.where(np.tril(np.ones((t, t), bool)), s, -1e30)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, -1), v)


def decoder_logits(p, ids, kv_heads, d, theta, eps):
    """A Llama (or, where the weights have q/k norms, Qwen3) decoder as transformers computes it."""
    b, t = ids.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.outer(np.arange(t), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        return x * cos + jnp.concatenate([-x[..., d // 2:], x[..., :d // 2]], -1) * sin

    def heads(x, n):
        return x.reshape(b, t, n, d).transpose(0, 2, 1, 3)

    x = p["model.embed_tokens.weight"][ids]
    for i in range(LAYERS):
        w = lambda n: p[f"model.layers.{i}.{n}"]  # noqa: E731
        a = rms(x, w("input_layernorm.weight"), eps)
        q = heads(a @ w("self_attn.q_proj.weight").T, HEADS)
        k = heads(a @ w("self_attn.k_proj.weight").T, kv_heads)
        if f"model.layers.{i}.self_attn.q_norm.weight" in p:  # Qwen3: each head normalized before RoPE
            q, k = rms(q, w("self_attn.q_norm.weight"), eps), rms(k, w("self_attn.k_norm.weight"), eps)
        q, k = rope(q), rope(k)
        v = heads(a @ w("self_attn.v_proj.weight").T, kv_heads)
        rep = HEADS // kv_heads
        o = attend(q, jnp.repeat(k, rep, 1), jnp.repeat(v, rep, 1)).transpose(0, 2, 1, 3).reshape(b, t, HEADS * d)
        x = x + o @ w("self_attn.o_proj.weight").T
        m = rms(x, w("post_attention_layernorm.weight"), eps)
        x = x + (jax.nn.silu(m @ w("mlp.gate_proj.weight").T) * (m @ w("mlp.up_proj.weight").T)) \
            @ w("mlp.down_proj.weight").T
    head = p["lm_head.weight"] if "lm_head.weight" in p else p["model.embed_tokens.weight"]
    return rms(x, p["model.norm.weight"], eps) @ head.T


QWEN3_HEAD_DIM, QWEN3_KV_HEADS, QWEN3_EPS, QWEN3_THETA = 32, 2, 1e-6, 1000000.0
llama_logits = functools.partial(decoder_logits, kv_heads=2, d=WIDTH // HEADS, theta=10000.0, eps=1e-5)
qwen3_logits = functools.partial(decoder_logits, kv_heads=QWEN3_KV_HEADS, d=QWEN3_HEAD_DIM, theta=QWEN3_THETA,
                                 eps=QWEN3_EPS)


def layer_norm(x, g, b, eps=1e-5):
    mu = jnp.mean(x, -1, keepdims=True)
    return (x - mu) / jnp.sqrt(jnp.mean((x - mu) ** 2, -1, keepdims=True) + eps) * g + b


def gpt2_logits(p, ids):
    b, t = ids.shape
    d = WIDTH // HEADS
    x = p["transformer.wte.weight"][ids] + p["transformer.wpe.weight"][:t]
    for i in range(LAYERS):
        w = lambda n: p[f"transformer.h.{i}.{n}"]  # noqa: E731
        a = layer_norm(x, w("ln_1.weight"), w("ln_1.bias"))
        qkv = a @ w("attn.c_attn.weight") + w("attn.c_attn.bias")
        q, k, v = (z.reshape(b, t, HEADS, d).transpose(0, 2, 1, 3) for z in jnp.split(qkv, 3, -1))
        o = attend(q, k, v).transpose(0, 2, 1, 3).reshape(b, t, WIDTH)
        x = x + o @ w("attn.c_proj.weight") + w("attn.c_proj.bias")
        m = layer_norm(x, w("ln_2.weight"), w("ln_2.bias"))
        f = m @ w("mlp.c_fc.weight") + w("mlp.c_fc.bias")
        f = 0.5 * f * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f ** 3)))
        x = x + f @ w("mlp.c_proj.weight") + w("mlp.c_proj.bias")
    return layer_norm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"]) @ p["transformer.wte.weight"].T


def init_llama(rng, vocab):
    e, d, inner = WIDTH, WIDTH // HEADS, 2 * WIDTH

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.05

    p = {"model.embed_tokens.weight": w(vocab, e), "lm_head.weight": w(vocab, e),
         "model.norm.weight": np.ones(e, np.float32)}
    for i in range(LAYERS):
        n = f"model.layers.{i}."
        p.update({n + "input_layernorm.weight": np.ones(e, np.float32),
                  n + "post_attention_layernorm.weight": np.ones(e, np.float32),
                  n + "self_attn.q_proj.weight": w(HEADS * d, e), n + "self_attn.k_proj.weight": w(2 * d, e),
                  n + "self_attn.v_proj.weight": w(2 * d, e), n + "self_attn.o_proj.weight": w(e, HEADS * d),
                  n + "mlp.gate_proj.weight": w(inner, e), n + "mlp.up_proj.weight": w(inner, e),
                  n + "mlp.down_proj.weight": w(e, inner)})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": e,
              "intermediate_size": inner, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
              "num_key_value_heads": 2, "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32"}
    return p, config, llama_logits


def init_gpt2(rng, vocab):
    e = WIDTH

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.05

    p = {"transformer.wte.weight": w(vocab, e), "transformer.wpe.weight": w(CONTEXT, e),
         "transformer.ln_f.weight": np.ones(e, np.float32), "transformer.ln_f.bias": np.zeros(e, np.float32)}
    for i in range(LAYERS):
        n = f"transformer.h.{i}."
        p.update({n + "ln_1.weight": np.ones(e, np.float32), n + "ln_1.bias": np.zeros(e, np.float32),
                  n + "ln_2.weight": np.ones(e, np.float32), n + "ln_2.bias": np.zeros(e, np.float32),
                  n + "attn.c_attn.weight": w(e, 3 * e), n + "attn.c_attn.bias": np.zeros(3 * e, np.float32),
                  n + "attn.c_proj.weight": w(e, e), n + "attn.c_proj.bias": np.zeros(e, np.float32),
                  n + "mlp.c_fc.weight": w(e, 4 * e), n + "mlp.c_fc.bias": np.zeros(4 * e, np.float32),
                  n + "mlp.c_proj.weight": w(4 * e, e), n + "mlp.c_proj.bias": np.zeros(e, np.float32)})
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab, "n_embd": e,
              "n_layer": LAYERS, "n_head": HEADS, "n_positions": CONTEXT, "layer_norm_epsilon": 1e-5,
              "activation_function": "gelu_new", "tie_word_embeddings": True, "torch_dtype": "float32"}
    return p, config, gpt2_logits


def init_qwen3(rng, vocab, tied=False):
    e, d, inner, kv = WIDTH, QWEN3_HEAD_DIM, 2 * WIDTH, QWEN3_KV_HEADS

    def w(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.05

    def gamma(n):  # away from 1, so that a q/k norm in the wrong order changes the model
        return (1.0 + 0.3 * rng.standard_normal(n)).astype(np.float32)

    p = {"model.embed_tokens.weight": w(vocab, e), "model.norm.weight": np.ones(e, np.float32)}
    if not tied:
        p["lm_head.weight"] = w(vocab, e)
    for i in range(LAYERS):
        n = f"model.layers.{i}."
        p.update({n + "input_layernorm.weight": np.ones(e, np.float32),
                  n + "post_attention_layernorm.weight": np.ones(e, np.float32),
                  n + "self_attn.q_proj.weight": w(HEADS * d, e), n + "self_attn.k_proj.weight": w(kv * d, e),
                  n + "self_attn.v_proj.weight": w(kv * d, e), n + "self_attn.o_proj.weight": w(e, HEADS * d),
                  n + "self_attn.q_norm.weight": gamma(d), n + "self_attn.k_norm.weight": gamma(d),
                  n + "mlp.gate_proj.weight": w(inner, e), n + "mlp.up_proj.weight": w(inner, e),
                  n + "mlp.down_proj.weight": w(e, inner)})
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": vocab,
              "hidden_size": e, "intermediate_size": inner, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "num_key_value_heads": kv, "head_dim": d,
              "max_position_embeddings": CONTEXT, "rms_norm_eps": QWEN3_EPS, "rope_theta": QWEN3_THETA,
              "rope_scaling": None, "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
              "max_window_layers": LAYERS, "tie_word_embeddings": tied,
              "torch_dtype": "bfloat16" if tied else "float32"}
    return p, config, qwen3_logits


def init_qwen3_tied(rng, vocab):
    return init_qwen3(rng, vocab, tied=True)


MODELS = {"llama": init_llama, "gpt2": init_gpt2, "qwen3": init_qwen3, "qwen3-tied": init_qwen3_tied}


def mean_loss(logits_fn, p, ids):
    logits = logits_fn(p, ids)[:, :-1]
    target = ids[:, 1:]
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.mean(jnp.take_along_axis(logp, target[..., None], -1))


def train(logits_fn, p, stream, steps=150, batch=16, length=64, lr=3e-3, seed=0):
    rng = np.random.default_rng(seed)
    grad = jax.jit(jax.value_and_grad(lambda q, ids: mean_loss(logits_fn, q, ids)))
    m = {k: np.zeros_like(v) for k, v in p.items()}
    s = {k: np.zeros_like(v) for k, v in p.items()}
    p = {k: jnp.asarray(v) for k, v in p.items()}
    for step in range(1, steps + 1):
        starts = rng.integers(0, len(stream) - length, batch)
        ids = jnp.asarray(np.stack([stream[i:i + length] for i in starts]))
        loss, g = grad(p, ids)
        for k in p:  # AdamW
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            s[k] = 0.999 * s[k] + 0.001 * g[k] ** 2
            update = (m[k] / (1 - 0.9 ** step)) / (jnp.sqrt(s[k] / (1 - 0.999 ** step)) + 1e-8)
            p[k] = p[k] - lr * (update + 0.01 * p[k])
        if step % 50 == 0:
            print(f"  step {step}: loss {float(loss):.3f}")
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def main():
    with open(os.path.join(HERE, "corpus.txt"), encoding="utf-8") as f:
        corpus = f.read()
    tokenizer = train_tokenizer(corpus)
    stream = np.array(tokenizer.encode(corpus).ids)
    sample = np.array(tokenizer.encode(SAMPLE_TEXT).ids[:CONTEXT])
    vocab = tokenizer.get_vocab_size()
    for name in sys.argv[1:] or MODELS:
        init = MODELS[name]
        print(f"{name}: vocab {vocab}, {len(stream)} training tokens")
        params, config, logits_fn = init(np.random.default_rng(1), vocab)
        params = train(logits_fn, params, stream)
        if config["torch_dtype"] == "bfloat16":  # stored rounded; the expected loss is the stored model's
            params = {k: v.astype(ml_dtypes.bfloat16) for k, v in params.items()}
        folder = os.path.join(HERE, name)
        os.makedirs(folder, exist_ok=True)
        save_file(params, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        tokenizer.save(os.path.join(folder, "tokenizer.json"))
        stored = {k: jnp.asarray(v.astype(np.float32)) for k, v in params.items()}
        loss = float(mean_loss(logits_fn, stored, jnp.asarray(sample[None])))
        with open(os.path.join(folder, "expected.json"), "w") as f:
            json.dump({"sample_tokens": len(sample), "sample_loss": loss}, f, indent=2)
        print(f"  loss on the built-in sample ({len(sample)} tokens): {loss:.4f}")


if __name__ == "__main__":
    main()
