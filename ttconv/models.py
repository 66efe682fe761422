"""Forward passes of Llama, Qwen3 and GPT-2 in jax.numpy, one layer at a time, two ways.

`TtModel` computes what tt-train computes from a tt-train file: its parameter names and
layouts (q_linear, Llama's kv_linear = [k; v] or Qwen3's k_linear and v_linear, Qwen3's
q/k norms per head before RoPE, RoPE on adjacent pairs (2i, 2i+1), weights [out, in],
padded vocabulary rows ignored, tied `fc`, positions cropped to the context). `HfModel`
computes what transformers computes from a safetensors checkpoint: separate q/k/v, q/k
norms where the checkpoint has them, RoPE on the pairs (i, i + D/2) ("rotate half"),
GPT-2's Conv1D [in, out] weights and tanh GELU. The two are written apart on purpose:
`ttconv check` compares them. Parameters are read one layer at a time, and of the embeddings
and the output head only the tokens' rows and a vocabulary chunk at a time (LogitStats), so
memory stays about one layer whatever the vocabulary; each layer runs as one jit-compiled function.
"""
import functools
import math

import numpy as np

from . import bf16
from .errors import MappingError
from .families import ROPE_FAMILIES
from .interrupts import import_held
from .mapping import BLOCK_0, count_tt_layers, find_prefix
from .tt.rows import RowGatherer, ScratchBuffer

jax = import_held("jax")
jax.config.update("jax_platforms", "cpu")
jnp = import_held("jax.numpy")

NEG_INF = -1e30
BUFFERS = ("attn.bias", "attn.masked_bias")  # GPT-2's causal-mask buffers in old checkpoints


def rope_frequencies(shape):
    """Inverse frequencies of the head dimension's pairs, with Llama 3 scaling when configured."""
    d = shape.head_dim
    inv = 1.0 / (shape.theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    scaling = shape.rope_scaling
    if not scaling:
        return inv
    factor, low, high = scaling["scaling_factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_context_length"]
    wavelength = 2 * math.pi / inv
    scaled = np.where(wavelength > original / low, inv / factor, inv)
    smooth = (original / wavelength - low) / (high - low)
    medium = (wavelength <= original / low) & (wavelength >= original / high)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def _angles(shape, length):
    angles = np.outer(np.arange(length, dtype=np.float64), rope_frequencies(shape))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _causal_attention(q, k, v):
    """q: [heads, T, d]; k, v: [kv heads, T, d] (each shared by heads / kv heads query heads)."""
    group = q.shape[0] // k.shape[0]
    k, v = jnp.repeat(k, group, axis=0), jnp.repeat(v, group, axis=0)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    length = q.shape[1]
    scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, NEG_INF)
    return jax.nn.softmax(scores, axis=-1) @ v


def _rms_norm(x, gamma, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


def _layer_norm(x, gamma, beta, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * gamma + beta


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _split_heads(x, heads):
    length = x.shape[0]
    return x.reshape(length, heads, -1).transpose(1, 0, 2)


def _merge_heads(x):
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


# ------------------------------------------------------------------ tt-train's side

def _rope_adjacent(x, cos, sin):
    """RoPE on the adjacent pairs (2i, 2i+1), as tt-train applies it."""
    even, odd = x[..., 0::2], x[..., 1::2]
    turned = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return turned.reshape(x.shape)


# Qwen3's block names where the Llama block (which _tt_rope_block reads) has the same thing.
QWEN3_AS_LLAMA = (("input_layernorm/", "attention_norm/"), ("post_attention_layernorm/", "mlp_norm/"),
                  ("self_attn/", "attention/"))


def _as_llama_names(name):
    for qwen3, llama in QWEN3_AS_LLAMA:
        if name.startswith(qwen3):
            return llama + name[len(qwen3):]
    return name


@functools.partial(jax.jit, static_argnames=("heads", "kv_heads", "eps"))
def _tt_rope_block(x, w, cos, sin, heads, kv_heads, eps):
    """A Llama block, or a Qwen3 block under Llama's names (separate k/v, q/k norms)."""
    a = _rms_norm(x, w["attention_norm/gamma"][0], eps)
    q = _split_heads(a @ w["attention/q_linear/weight"].T, heads)
    if "attention/kv_linear/weight" in w:
        k, v = jnp.split(a @ w["attention/kv_linear/weight"].T, 2, axis=-1)
    else:
        k, v = a @ w["attention/k_linear/weight"].T, a @ w["attention/v_linear/weight"].T
    k, v = _split_heads(k, kv_heads), _split_heads(v, kv_heads)
    if "attention/q_norm/gamma" in w:  # each head normalized before RoPE
        q = _rms_norm(q, w["attention/q_norm/gamma"][0], eps)
        k = _rms_norm(k, w["attention/k_norm/gamma"][0], eps)
    attended = _causal_attention(_rope_adjacent(q, cos, sin), _rope_adjacent(k, cos, sin), v)
    x = x + _merge_heads(attended) @ w["attention/out_linear/weight"].T
    m = _rms_norm(x, w["mlp_norm/gamma"][0], eps)
    return x + (jax.nn.silu(m @ w["mlp/w1/weight"].T) * (m @ w["mlp/w3/weight"].T)) @ w["mlp/w2/weight"].T


@functools.partial(jax.jit, static_argnames=("heads", "eps"))
def _tt_gpt2_block(x, w, heads, eps):
    a = _layer_norm(x, w["ln1/gamma"][0], w["ln1/beta"][0], eps)
    qkv = a @ w["attention/qkv_linear/weight"].T + w["attention/qkv_linear/bias"][0]
    q, k, v = (_split_heads(part, heads) for part in jnp.split(qkv, 3, axis=-1))
    x = x + _merge_heads(_causal_attention(q, k, v)) @ w["attention/out_linear/weight"].T \
        + w["attention/out_linear/bias"][0]
    m = _layer_norm(x, w["ln2/gamma"][0], w["ln2/beta"][0], eps)
    hidden = _gelu_tanh(m @ w["mlp/fc1/weight"].T + w["mlp/fc1/bias"][0])
    return x + hidden @ w["mlp/fc2/weight"].T + w["mlp/fc2/bias"][0]


class TtModel:
    """The model held in a tt-train file or checkpoint directory (formats.open_tt), run as tt-train runs it."""

    def __init__(self, tt, family, shape, eps):
        self.tt, self.family, self.shape, self.eps = tt, family, shape, eps
        self.params = tt.weights()
        self.prefix = find_prefix(self.params, family, tt.path)
        self._scratch = ScratchBuffer()
        self._check()

    def _tensor(self, name):
        param = self.params.get(f"{self.prefix}/{name}")
        if param is None:
            raise MappingError(f"{self.tt.path}: no tensor {self.prefix}/{name}")
        return self.tt.read_values(param.data).reshape(param.rows, param.cols)

    def _rows(self, name):
        param = self.params.get(f"{self.prefix}/{name}")
        return param.rows if param is not None else None

    def _row_range(self, name, first, last):
        """Rows [first, last) of a tensor as float32, read through the reader's row source (only the
        stored rows they lie in)."""
        rows = RowGatherer(self.tt, self.params[f"{self.prefix}/{name}"], self._scratch)
        try:
            return rows.float32_rows(first, last)
        finally:
            rows.close()

    def _picked_rows(self, name, ids):
        """The rows of a tensor that ids name, as float32 [len(ids), cols] (each stored row read once)."""
        unique, where = np.unique(ids, return_inverse=True)
        return np.stack([self._row_range(name, int(i), int(i) + 1)[0] for i in unique])[where]

    def head_rows(self, first, last):
        """Rows [first, last) of the output head (fc), float32."""
        return self._row_range("fc/weight", first, last)

    @property
    def context(self):
        """Positions the tt model can take (GPT-2's pos_emb may be cropped below the checkpoint's)."""
        if self.family == "gpt2":
            return min(self.shape.max_sequence_length, self._rows("pos_emb/weight") or 0)
        return self.shape.max_sequence_length

    def _check(self):
        layers = count_tt_layers(self.params, self.prefix, self.family)
        fc = self.params.get(f"{self.prefix}/fc/weight")
        shape = self.shape
        if self.family == "llama":
            expected = {"llama_block_0/attention/q_linear/weight": shape.num_heads * shape.head_dim,
                        "llama_block_0/attention/kv_linear/weight": 2 * shape.num_groups * shape.head_dim,
                        "llama_block_0/mlp/w1/weight": shape.intermediate_dim}
        elif self.family == "qwen3":
            expected = {"qwen3_block_0/self_attn/q_linear/weight": shape.num_heads * shape.head_dim,
                        "qwen3_block_0/self_attn/k_linear/weight": shape.num_groups * shape.head_dim,
                        "qwen3_block_0/mlp/w1/weight": shape.intermediate_dim}
        else:
            expected = {"gpt_block_0/attention/qkv_linear/weight": 3 * shape.embedding_dim,
                        "gpt_block_0/mlp/fc1/weight": shape.intermediate_dim}
        problems = [f"{name} has {self._rows(name)} rows in the tt file, the checkpoint's config says {rows}"
                    for name, rows in expected.items() if layers and self._rows(name) != rows]
        if layers != self.shape.num_blocks:
            problems.append(f"{layers} blocks in the tt file, {self.shape.num_blocks} layers in the checkpoint")
        if fc.cols != self.shape.embedding_dim:
            problems.append(f"embedding width {fc.cols} in the tt file, {self.shape.embedding_dim} in the checkpoint")
        if fc.rows < self.shape.vocab_size:
            problems.append(f"{fc.rows} vocabulary rows in the tt file, {self.shape.vocab_size} in the checkpoint")
        if problems:
            raise MappingError(f"{self.tt.path} and the checkpoint describe different models: {'; '.join(problems)}")

    def final_states(self, ids, progress=None):
        """The normed last hidden states [T, embedding] for token ids (numpy int array): logits are
        these times the head's rows (head_rows), taken a vocabulary chunk at a time."""
        shape, prefix = self.shape, self.prefix
        embedding = "tok_emb/weight" if f"{prefix}/tok_emb/weight" in self.params else "fc/weight"
        x = jnp.asarray(self._picked_rows(embedding, ids))
        if self.family == "gpt2":
            x = x + self._row_range("pos_emb/weight", 0, len(ids))
        else:
            cos, sin = _angles(shape, len(ids))
        block = BLOCK_0[self.family].replace("_0/", "_{}/")
        for i in range(shape.num_blocks):
            head = f"{prefix}/{block.format(i)}"
            w = {_as_llama_names(name[len(head):]): jnp.asarray(self._tensor(name[len(prefix) + 1:]))
                 for name in self.params if name.startswith(head)}
            if self.family in ROPE_FAMILIES:
                x = _tt_rope_block(x, w, cos, sin, shape.num_heads, shape.num_groups, self.eps)
            else:
                x = _tt_gpt2_block(x, w, shape.num_heads, self.eps)
            x.block_until_ready()
            del w  # before the next layer is read: one layer in memory at a time
            if progress is not None:
                progress.advance(1)
        if self.family in ROPE_FAMILIES:
            x = _rms_norm(x, self._tensor("ln_fc/gamma")[0], self.eps)
        else:
            x = _layer_norm(x, self._tensor("ln_fc/gamma")[0], self._tensor("ln_fc/beta")[0], self.eps)
        return np.asarray(x)


# ------------------------------------------------------------------ transformers' side

def _rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@functools.partial(jax.jit, static_argnames=("heads", "kv_heads", "eps", "adjacent_pairs"))
def _hf_rope_layer(x, t, cos, sin, heads, kv_heads, eps, adjacent_pairs):
    """A Llama decoder layer, or a Qwen3 one (q/k norms per head before RoPE)."""
    normed = _rms_norm(x, t["input_layernorm.weight"], eps)
    q = _split_heads(normed @ t["self_attn.q_proj.weight"].T, heads)
    k = _split_heads(normed @ t["self_attn.k_proj.weight"].T, kv_heads)
    v = _split_heads(normed @ t["self_attn.v_proj.weight"].T, kv_heads)
    if "self_attn.q_norm.weight" in t:
        q = _rms_norm(q, t["self_attn.q_norm.weight"], eps)
        k = _rms_norm(k, t["self_attn.k_norm.weight"], eps)
    if adjacent_pairs:  # q/k rows read as Meta-interleaved
        q, k = _rope_adjacent(q, cos, sin), _rope_adjacent(k, cos, sin)
    else:
        full_cos, full_sin = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
        q = q * full_cos + _rotate_half(q) * full_sin
        k = k * full_cos + _rotate_half(k) * full_sin
    x = x + _merge_heads(_causal_attention(q, k, v)) @ t["self_attn.o_proj.weight"].T
    post = _rms_norm(x, t["post_attention_layernorm.weight"], eps)
    gate = jax.nn.silu(post @ t["mlp.gate_proj.weight"].T)
    return x + (gate * (post @ t["mlp.up_proj.weight"].T)) @ t["mlp.down_proj.weight"].T


@functools.partial(jax.jit, static_argnames=("heads", "eps"))
def _hf_gpt2_layer(x, t, heads, eps):
    normed = _layer_norm(x, t["ln_1.weight"], t["ln_1.bias"], eps)
    q, k, v = (_split_heads(part, heads)
               for part in jnp.split(normed @ t["attn.c_attn.weight"] + t["attn.c_attn.bias"], 3, axis=-1))
    x = x + _merge_heads(_causal_attention(q, k, v)) @ t["attn.c_proj.weight"] + t["attn.c_proj.bias"]
    normed = _layer_norm(x, t["ln_2.weight"], t["ln_2.bias"], eps)
    return x + _gelu_tanh(normed @ t["mlp.c_fc.weight"] + t["mlp.c_fc.bias"]) @ t["mlp.c_proj.weight"] \
        + t["mlp.c_proj.bias"]


def _float32(ckpt, info, first=0, last=None):
    """Rows [first, last) of a checkpoint tensor (all of it by default) as float32."""
    raw = ckpt.read_rows(info, first, last)
    if info.dtype == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)  # exact: bf16 is float32's high half
    raw = raw.astype(np.float32, copy=False)
    return raw.reshape(info.shape) if first == 0 and last is None else raw


class HfModel:
    """The model of a Hugging Face checkpoint (checkpoint.Checkpoint), run as transformers runs it;
    with bfloat16, its weights rounded to bfloat16 (nearest even) first, as a bfloat16 file holds them."""

    def __init__(self, ckpt, family, shape, eps, bfloat16=False):
        self.ckpt, self.family, self.shape, self.eps = ckpt, family, shape, eps
        self.bfloat16 = bfloat16
        strip = "transformer." if family == "gpt2" else ""
        self.tensors = {name[len(strip):] if strip and name.startswith(strip) else name: info
                        for name, info in ckpt.tensors.items()}

    def _tensor(self, name, first=0, last=None):
        if name not in self.tensors:
            raise MappingError(f"{self.ckpt.directory}: the checkpoint has no tensor {name}")
        values = _float32(self.ckpt, self.tensors[name], first, last)
        return bf16.rounded(values) if self.bfloat16 else values

    def _picked_rows(self, name, ids):
        unique, where = np.unique(ids, return_inverse=True)
        return np.concatenate([self._tensor(name, int(i), int(i) + 1) for i in unique])[where]

    def head_rows(self, first, last):
        """Rows [first, last) of the output head (lm_head, or the tied embedding), float32."""
        rope = self.family in ROPE_FAMILIES
        name = "lm_head.weight" if "lm_head.weight" in self.tensors else (
            "model.embed_tokens.weight" if rope else "wte.weight")
        return self._tensor(name, first, last)

    def final_states(self, ids, progress=None, adjacent_pairs=(False,)):
        """The normed last hidden states [T, embedding] for token ids, one per entry of adjacent_pairs
        (RoPE families: True reads the checkpoint's q/k rows as Meta-interleaved); all variants share
        each layer read. Logits are these times head_rows, a vocabulary chunk at a time."""
        shape = self.shape
        rope = self.family in ROPE_FAMILIES
        if rope:
            states = [jnp.asarray(self._picked_rows("model.embed_tokens.weight", ids))] * len(adjacent_pairs)
            cos, sin = _angles(shape, len(ids))
        else:
            states = [jnp.asarray(self._picked_rows("wte.weight", ids) + self._tensor("wpe.weight", 0, len(ids)))]
        for i in range(shape.num_blocks):
            head = f"model.layers.{i}." if rope else f"h.{i}."
            t = {name[len(head):]: jnp.asarray(self._tensor(name)) for name in self.tensors
                 if name.startswith(head) and name[len(head):] not in BUFFERS and not name.endswith("inv_freq")}
            if rope:
                states = [_hf_rope_layer(x, t, cos, sin, shape.num_heads, shape.num_groups, self.eps, pairs)
                          for x, pairs in zip(states, adjacent_pairs)]
            else:
                states = [_hf_gpt2_layer(states[0], t, shape.num_heads, self.eps)]
            jax.block_until_ready(states)
            del t  # before the next layer is read: one layer in memory at a time
            if progress is not None:
                progress.advance(1)
        if rope:
            norm = self._tensor("model.norm.weight")
            return [np.asarray(_rms_norm(x, norm, self.eps)) for x in states]
        return [np.asarray(_layer_norm(states[0], self._tensor("ln_f.weight"), self._tensor("ln_f.bias"), self.eps))]


HEAD_CHUNK_BYTES = 1 << 25  # float32 head rows read at a time: logits never exist for the whole vocabulary


class LogitStats:
    """What a comparison needs of logits [T, vocabulary], taken a vocabulary chunk at a time: each
    position's log-sum-exp, the logit of its next token, and its top-1 prediction."""

    def __init__(self, ids):
        self.ids = np.asarray(ids)
        length = len(self.ids)
        self.top = np.full(length, -np.inf)
        self.sum = np.zeros(length)
        self.target = np.full(length, np.nan)
        self.best = np.full(length, -np.inf)
        self.argmax = np.zeros(length, dtype=np.int64)

    def add(self, first, logits):
        """Logits [T, n] of vocabulary rows first..first + n."""
        logits = np.asarray(logits, dtype=np.float64)
        top = np.maximum(self.top, logits.max(axis=1))
        self.sum = self.sum * np.exp(self.top - top) + np.exp(logits - top[:, None]).sum(axis=1)
        self.top = top
        nxt = self.ids[1:] - first
        inside = np.flatnonzero((nxt >= 0) & (nxt < logits.shape[1]))
        self.target[inside] = logits[inside, nxt[inside]]
        local = logits.argmax(axis=1)
        value = logits[np.arange(len(local)), local]
        better = value > self.best  # ties keep the earlier index, as a whole-vocabulary argmax does
        self.best[better], self.argmax[better] = value[better], local[better] + first

    def loss(self):
        """Mean next-token cross-entropy (nats), float64."""
        return float(np.mean(np.log(self.sum[:-1]) + self.top[:-1] - self.target[:-1]))


def head_chunks(vocab_size, width):
    """(first, last) vocabulary row ranges of about HEAD_CHUNK_BYTES of float32 rows of width values."""
    step = max(32, HEAD_CHUNK_BYTES // (4 * width))
    return [(first, min(first + step, vocab_size)) for first in range(0, vocab_size, step)]


def norm_epsilon(family, config):
    """The norm epsilon of a config (rms_norm_eps or layer_norm_epsilon, transformers' defaults)."""
    if family in ROPE_FAMILIES:
        return float(config.get("rms_norm_eps", 1e-6))
    return float(config.get("layer_norm_epsilon", 1e-5))
