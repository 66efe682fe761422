"""Qwen3.5 (Hugging Face `qwen3_5`; tt-train's Python side calls it Qwen3.8): what ttconv knows of it.

A hybrid of Gated DeltaNet (`linear_attn`) and gated attention (`self_attn`) layers. tt-train
loads the Hugging Face checkpoint itself (ttml/models/qwen38/loading.py), so ttconv's direction is
out: a ttml checkpoint of a fine-tune back to the original's layout. ttml's names mirror Hugging
Face's under its root `Qwen38Transformer` (`layers/{i}/...` for `model.language_model.layers.{i}...`)
with three differences its loader makes, which export undoes: the zero-centred RMSNorm weights
(input, post-attention, final, q_norm, k_norm; not the DeltaNet's gated norm) hold 1 + w; the
depthwise `conv1d.weight` [C, 1, K] is held as K taps `conv_tap_{j}` [1, 1, 1, C]; the embedding
and lm_head are padded to a multiple of 32. Under tensor parallelism it also reorders
in_proj_qkv's rows and the taps' channels (see QKV_CHANNELS), which --tp undoes. The vision tower
and the MTP head are not in ttml's model: export copies them from the original. `check` runs
both layer kinds on both sides (_layers).
"""
import functools
import math

import numpy as np

from .. import bf16
from ..errors import CheckpointError, TtconvError
from ..hf.hfconfig import ModelShape, refuse
from ..hf.tokenizer import llama_tokenizer_text
from ..mapping import expand
from ..tt.ttml_names import qkv_sizes
from .base import Family

L = "model.language_model.layers.{i}."
MAX_TAPS = 8  # conv taps a table line is written for (Qwen3.5's kernel has 4)

# the block's tensors: ttml name within layers/{i}/ (the canonical name within the block too) and
# the Hugging Face name within the layer, with the transform tt-train applied
_BLOCK = (
    ("input_layernorm/weight",               "input_layernorm.weight:plus1"),
    ("post_attention_layernorm/weight",      "post_attention_layernorm.weight:plus1"),
    ("self_attn/q_proj/weight",              "self_attn.q_proj.weight"),
    ("self_attn/k_proj/weight",              "self_attn.k_proj.weight"),
    ("self_attn/v_proj/weight",              "self_attn.v_proj.weight"),
    ("self_attn/o_proj/weight",              "self_attn.o_proj.weight"),
    ("self_attn/q_norm/weight",              "self_attn.q_norm.weight:plus1"),
    ("self_attn/k_norm/weight",              "self_attn.k_norm.weight:plus1"),
    ("linear_attn/in_proj_qkv/weight",       "linear_attn.in_proj_qkv.weight"),
    ("linear_attn/in_proj_z/weight",         "linear_attn.in_proj_z.weight"),
    ("linear_attn/in_proj_b/weight",         "linear_attn.in_proj_b.weight"),
    ("linear_attn/in_proj_a/weight",         "linear_attn.in_proj_a.weight"),
    ("linear_attn/out_proj/weight",          "linear_attn.out_proj.weight"),
    ("linear_attn/A_log",                    "linear_attn.A_log"),
    ("linear_attn/dt_bias",                  "linear_attn.dt_bias"),
    ("linear_attn/norm_weight",              "linear_attn.norm.weight"),
    ("mlp/gate_proj/weight",                 "mlp.gate_proj.weight"),
    ("mlp/up_proj/weight",                   "mlp.up_proj.weight"),
    ("mlp/down_proj/weight",                 "mlp.down_proj.weight"),
) + tuple((f"linear_attn/conv_tap_{j}", f"linear_attn.conv1d.weight:tap{j}") for j in range(MAX_TAPS))

TABLE = (
    # tt name                     checkpoint source(s)                                                     rows
    ("tok_emb/weight",            "model.language_model.embed_tokens.weight",                              "pad"),
    ("fc/weight",                 "lm_head.weight | model.language_model.embed_tokens.weight",             "pad"),
    ("ln_fc/gamma",               "model.language_model.norm.weight:plus1",                                ""),
) + tuple((f"qwen35_block_{{i}}/{name}", L + source, "") for name, source in _BLOCK)

# in_proj_qkv's rows, and its conv taps' channels, are [q | k | v]: under N-way tensor parallelism
# tt-train's loader reorders them so that each device's contiguous slice is its own heads' q, k
# and v (ttml/models/qwen38/parallel.py), which a gathered file holds rank-interleaved
QKV_CHANNELS = ("linear_attn/in_proj_qkv/weight",) + tuple(f"linear_attn/conv_tap_{j}" for j in range(MAX_TAPS))

TTML_TABLE = (
    # ttml name (under Qwen38Transformer/)   fused   canonical name
    ("embed_tokens/weight",                  "",     "tok_emb/weight"),
    ("lm_head/weight",                       "",     "fc/weight"),
    ("norm/weight",                          "",     "ln_fc/gamma"),
) + tuple((f"layers/{{i}}/{name}", "qkv" if name in QKV_CHANNELS else "",
           f"qwen35_block_{{i}}/{name}" + (" = q k v" if name in QKV_CHANNELS else "")) for name, _ in _BLOCK)

HF_ORDER = (
    ("embed_tokens.weight",),
    tuple(source.split(":")[0] for _, source in _BLOCK),
    ("norm.weight", "lm_head.weight"),
)


# the blocks' zero-centred norms (transformers multiplies by 1 + w, tt-train's loader stores 1 + w)
ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                "self_attn.k_norm.weight")


def _details(text, head_dim):
    """What the forward passes need of the text config beyond the ModelShape."""
    layers = text["num_hidden_layers"]
    types = text.get("layer_types") or [
        "full_attention" if (i + 1) % int(text.get("full_attention_interval", 4)) == 0 else "linear_attention"
        for i in range(layers)]
    rope = text.get("rope_parameters") or {}
    factor = float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.25)))
    return {
        "layer_types": tuple(types),
        "linear_key_heads": text.get("linear_num_key_heads"),
        "linear_value_heads": text.get("linear_num_value_heads"),
        "linear_key_dim": text.get("linear_key_head_dim"),
        "linear_value_dim": text.get("linear_value_head_dim"),
        "rotary_dim": int(head_dim * factor),
        "theta": float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
        "rope_type": rope.get("rope_type", "default"),
    }


@functools.lru_cache(maxsize=None)
def _layers():
    """The jit-compiled layers of both sides (built on first use: jax loads only for check).

    tt-train's side reads the file as its model holds it: norms that already hold 1 + w, the conv
    as K taps [1, C] applied as shifts of the sequence. transformers' side reads the checkpoint:
    1 + w taken at run time (as prepared by _hf_norm_scales), the conv1d weight [C, 1, K] slid over
    the zero-padded sequence. Both share the delta rule (the recurrence transformers' reference
    computes token by token), attention and partial RoPE on the pairs (i, i + rotary_dim / 2)."""
    from .. import models as m

    jax, jnp = m.jax, m.jnp

    def l2_normalized(x):
        return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)

    def delta_rule(q, k, v, g, beta, key_heads):
        """q, k: [T, key heads, dk]; v: [T, value heads, dv]; g, beta: [T, value heads] -> [T, value heads, dv]."""
        repeats = v.shape[1] // key_heads
        q = jnp.repeat(l2_normalized(q), repeats, axis=1) / math.sqrt(q.shape[-1])
        k = jnp.repeat(l2_normalized(k), repeats, axis=1)

        def step(state, inputs):  # state [value heads, dk, dv]
            q_t, k_t, v_t, g_t, beta_t = inputs
            state = state * jnp.exp(g_t)[:, None, None]
            remembered = jnp.einsum("hkv,hk->hv", state, k_t)
            state = state + k_t[:, :, None] * ((v_t - remembered) * beta_t[:, None])[:, None, :]
            return state, jnp.einsum("hkv,hk->hv", state, q_t)

        start = jnp.zeros((v.shape[1], q.shape[-1], v.shape[-1]), jnp.float32)
        return jax.lax.scan(step, start, (q, k, v, g, beta))[1]

    def mixer(qkv, z, b, decay_in, a_log, dt_bias, norm_weight, out_proj, sizes, eps):
        """The Gated DeltaNet after its causal conv: qkv [T, C] (conv and SiLU applied); z, b and decay_in
        the in_proj_z, in_proj_b and in_proj_a outputs."""
        length = qkv.shape[0]
        nk, nv, dk, dv = sizes
        q, k, v = jnp.split(qkv, [nk * dk, 2 * nk * dk], axis=-1)
        beta = jax.nn.sigmoid(b)
        g = -jnp.exp(a_log) * jax.nn.softplus(decay_in + dt_bias)
        out = delta_rule(q.reshape(length, nk, dk), k.reshape(length, nk, dk), v.reshape(length, nv, dv), g, beta, nk)
        gated = m.rms_norm(out, norm_weight, eps) * jax.nn.silu(z.reshape(length, nv, dv))
        return gated.reshape(length, -1) @ out_proj.T

    def rope_half(x, cos, sin):
        """RoPE on the first rotary_dim values of each head, pairs (i, i + rotary_dim / 2)."""
        r = 2 * cos.shape[-1]
        turned, kept = x[..., :r], x[..., r:]
        half = r // 2
        rotated = jnp.concatenate([-turned[..., half:], turned[..., :half]], axis=-1)
        full_cos, full_sin = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
        return jnp.concatenate([turned * full_cos + rotated * full_sin, kept], axis=-1)

    def attention(a, q_proj, k_proj, v_proj, o_proj, q_scale, k_scale, cos, sin, heads, kv_heads, eps):
        """Gated attention: q_proj gives each head [query | gate]; norms per head before RoPE."""
        length = a.shape[0]
        both = (a @ q_proj.T).reshape(length, heads, -1)
        query, gate = jnp.split(both, 2, axis=-1)
        q = m.rms_norm(query.transpose(1, 0, 2), q_scale, eps)
        k = m.rms_norm(m.split_heads(a @ k_proj.T, kv_heads), k_scale, eps)
        v = m.split_heads(a @ v_proj.T, kv_heads)
        attended = m.causal_attention(rope_half(q, cos, sin), rope_half(k, cos, sin), v)
        return (m.merge_heads(attended) * jax.nn.sigmoid(gate.reshape(length, -1))) @ o_proj.T

    def mlp(x, gate, up, down):
        return (jax.nn.silu(x @ gate.T) * (x @ up.T)) @ down.T

    @m.jit("sizes", "heads", "kv_heads", "eps")
    def tt_block(x, w, cos, sin, sizes, heads, kv_heads, eps):
        a = m.rms_norm(x, w["input_layernorm/weight"][0], eps)
        if "linear_attn/in_proj_qkv/weight" in w:
            qkv = a @ w["linear_attn/in_proj_qkv/weight"].T
            length = qkv.shape[0]
            kernel = sum(1 for name in w if name.startswith("linear_attn/conv_tap_"))
            conv = 0.0
            for j in range(kernel):  # tap j reads position t - (K - 1 - j)
                shift = kernel - 1 - j
                shifted = jnp.concatenate([jnp.zeros((shift, qkv.shape[1]), qkv.dtype), qkv[:length - shift]])
                conv = conv + shifted * w[f"linear_attn/conv_tap_{j}"][0]
            a = mixer(jax.nn.silu(conv), a @ w["linear_attn/in_proj_z/weight"].T,
                      a @ w["linear_attn/in_proj_b/weight"].T, a @ w["linear_attn/in_proj_a/weight"].T,
                      w["linear_attn/A_log"][0], w["linear_attn/dt_bias"][0], w["linear_attn/norm_weight"][0],
                      w["linear_attn/out_proj/weight"], sizes, eps)
        else:
            a = attention(a, w["self_attn/q_proj/weight"], w["self_attn/k_proj/weight"], w["self_attn/v_proj/weight"],
                          w["self_attn/o_proj/weight"], w["self_attn/q_norm/weight"][0], w["self_attn/k_norm/weight"][0],
                          cos, sin, heads, kv_heads, eps)
        x = x + a
        post = m.rms_norm(x, w["post_attention_layernorm/weight"][0], eps)
        return x + mlp(post, w["mlp/gate_proj/weight"], w["mlp/up_proj/weight"], w["mlp/down_proj/weight"])

    @m.jit("sizes", "heads", "kv_heads", "eps")
    def hf_layer(x, t, cos, sin, sizes, heads, kv_heads, eps):
        a = m.rms_norm(x, t["input_layernorm.weight"], eps)
        if "linear_attn.in_proj_qkv.weight" in t:
            qkv = a @ t["linear_attn.in_proj_qkv.weight"].T
            weight = t["linear_attn.conv1d.weight"][:, 0, :]  # [C, K]
            length, kernel = qkv.shape[0], weight.shape[1]
            padded = jnp.concatenate([jnp.zeros((kernel - 1, qkv.shape[1]), qkv.dtype), qkv])
            windows = jnp.stack([padded[j:j + length] for j in range(kernel)], axis=-1)  # [T, C, K]
            a = mixer(jax.nn.silu(jnp.sum(windows * weight, axis=-1)), a @ t["linear_attn.in_proj_z.weight"].T,
                      a @ t["linear_attn.in_proj_b.weight"].T, a @ t["linear_attn.in_proj_a.weight"].T,
                      t["linear_attn.A_log"], t["linear_attn.dt_bias"], t["linear_attn.norm.weight"],
                      t["linear_attn.out_proj.weight"], sizes, eps)
        else:
            a = attention(a, t["self_attn.q_proj.weight"], t["self_attn.k_proj.weight"], t["self_attn.v_proj.weight"],
                          t["self_attn.o_proj.weight"], t["self_attn.q_norm.weight"], t["self_attn.k_norm.weight"],
                          cos, sin, heads, kv_heads, eps)
        x = x + a
        post = m.rms_norm(x, t["post_attention_layernorm.weight"], eps)
        return x + mlp(post, t["mlp.gate_proj.weight"], t["mlp.up_proj.weight"], t["mlp.down_proj.weight"])

    return m, tt_block, hf_layer


def _angles(shape, length):
    """cos, sin [T, rotary_dim / 2] of the partial RoPE."""
    details = shape.details
    r = details["rotary_dim"]
    inv = 1.0 / (details["theta"] ** (np.arange(0, r, 2, dtype=np.float64) / r))
    angles = np.outer(np.arange(length, dtype=np.float64), inv)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _hf_norm_scales(model, t):
    """A layer's tensors with each zero-centred norm weight w replaced by the 1 + w transformers
    multiplies by (rounded to bfloat16 as a bfloat16 file holds it, when the check rounds)."""
    m = _layers()[0]
    out = dict(t)
    for name in ZERO_CENTRED:
        if name in out:
            out[name] = m.jnp.asarray(_one_plus(model, np.asarray(out[name])))
    return out


def _one_plus(model, w):
    scale = w + np.float32(1)
    return bf16.rounded(scale) if model.bfloat16 else scale


def _sizes(shape):
    d = shape.details
    return d["linear_key_heads"], d["linear_value_heads"], d["linear_key_dim"], d["linear_value_dim"]


class Qwen3_5Family(Family):
    name = "qwen3.5"
    aliases = ("qwen38",)
    display = "Qwen3.5"
    formats = ()  # tt-train loads Hugging Face's checkpoint itself: no conversion command
    config_model_path = None
    model_types = ("qwen3_5", "qwen3_5_text")
    architecture_prefixes = ("Qwen3_5",)
    hf_root = "model.language_model."
    hf_order = HF_ORDER
    header_epsilon = ("rms_norm_eps", 1e-6)
    table = TABLE
    # not in ttml's model: copied from the original
    ignored = (r"model\.visual\..+", r"mtp\..+", r"model\.language_model\.layers\.\d+\.self_attn\.rotary_emb\..+")
    block_0 = "qwen35_block_0/"
    model_root = "qwen35"
    ttml_root = "Qwen38Transformer"
    ttml_table = TTML_TABLE

    def read_shape(self, ckpt, where):
        text = ckpt.config.get("text_config") or ckpt.config

        def number(key, default=None):
            value = text.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{where}: {key} is {value!r}, expected a positive integer")
            return value

        heads = number("num_attention_heads")
        head_dim = number("head_dim")
        return ModelShape(
            family=self.name, embedding_dim=number("hidden_size"), num_blocks=number("num_hidden_layers"),
            num_heads=heads, num_groups=number("num_key_value_heads", heads), head_dim=head_dim,
            intermediate_dim=number("intermediate_size"), vocab_size=number("vocab_size"),
            max_sequence_length=number("max_position_embeddings", 2048),
            weight_tying=bool(ckpt.config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)), details=_details(text, head_dim))

    def canonical_name(self, name):
        """A text-only checkpoint's model.layers... read as the full model's model.language_model.layers..."""
        for short in ("model.layers.", "model.embed_tokens.", "model.norm."):
            if name.startswith(short):
                return "model.language_model." + name[len("model."):]
        return name

    def hf_order_key(self, name):
        return super().hf_order_key(name.replace("model.language_model.", "model.", 1))

    def model_tensors(self, ckpt, vocab_multiple=32):
        """The ttml model's tensors for a checkpoint: each table line's source shape, as tt-train holds it."""
        tensors = self.canonical_names(ckpt.tensors, ckpt.directory)
        out = []
        for name, (spec, rule) in expand(self.table, self.model_shape(ckpt).num_blocks).items():
            source, _, transform = spec.split(" | ")[0].partition(":")
            info = tensors.get(source)
            if info is None:
                continue
            rows, cols = info.matrix_shape()
            if transform.startswith("tap"):
                if int(transform[3:]) < cols:
                    out.append((name, 1, rows))
                continue
            out.append((name, -(-rows // vocab_multiple) * vocab_multiple if rule == "pad" else rows, cols))
        return out

    def ttml_fused_sizes(self, path, name, fused, size, tensors):
        """in_proj_qkv and its taps: q and k as wide as each other, v as wide as in_proj_z's output."""
        z = name.rsplit("/linear_attn/", 1)[0] + "/linear_attn/in_proj_z/weight"
        return qkv_sizes(path, name, size, tensors, z, "v", lambda record: record.rows)

    def tokenizer_text(self, model_dir):
        return llama_tokenizer_text(model_dir)

    def _not_read(self, what):
        raise TtconvError(f"ttconv does not {what} for {self.display} models")

    def hf_config(self, fields, tied, sizes, where):
        raise CheckpointError(f"{where}: a {self.display} checkpoint is exported beside its original: give --hf_model")

    def hf_shapes(self, config):
        self._not_read("build a checkpoint from a header")

    def tt_tensors(self, shape, vocab_rows):
        self._not_read("build tt-train files from a config")

    def transformer_config(self, shape, vocab_multiple):
        self._not_read("write a tt-train YAML (its recipes build the model from config.json)")

    def norm_epsilon(self, config):
        return float((config.get("text_config") or config).get("rms_norm_eps", 1e-6))

    def tt_expected_rows(self, shape):
        return {"qwen35_block_0/mlp/gate_proj/weight": shape.intermediate_dim}

    def _check_shape(self, shape):
        details = shape.details
        if details["rope_type"] != "default":
            refuse("config.json", f"RoPE type {details['rope_type']!r} (check runs the default RoPE only)")
        if None in _sizes(shape):
            raise CheckpointError("config.json: the linear_num_*_heads and linear_*_head_dim sizes are missing")

    def tt_forward(self, model, ids, progress=None):
        shape = model.shape
        self._check_shape(shape)
        m, tt_block, _ = _layers()
        cos, sin = _angles(shape, len(ids))
        x = model.run_blocks(model.embedded(ids), lambda x, w: tt_block(
            x, w, cos, sin, _sizes(shape), shape.num_heads, shape.num_groups, model.eps), progress=progress)
        return m.rms_norm(x, model.tensor("ln_fc/gamma")[0], model.eps)

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        shape = model.shape
        self._check_shape(shape)
        m, _, hf_layer = _layers()
        cos, sin = _angles(shape, len(ids))
        states = [m.jnp.asarray(model.picked_rows(self.hf_root + "embed_tokens.weight", ids))]
        states = model.run_layers(states, self.hf_root + "layers.{}.", lambda states, t: [hf_layer(
            states[0], _hf_norm_scales(model, t), cos, sin, _sizes(shape), shape.num_heads, shape.num_groups,
            model.eps)], progress)
        return [m.rms_norm(states[0], _one_plus(model, model.tensor(self.hf_root + "norm.weight")), model.eps)]

    def hf_head_name(self, tensors):
        return "lm_head.weight" if "lm_head.weight" in tensors else self.hf_root + "embed_tokens.weight"


QWEN3_5 = Qwen3_5Family()
