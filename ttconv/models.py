"""The building blocks of `ttconv check`'s forward passes, in jax.numpy, one layer at a time, two ways.

`TtModel` reads a tt-train file as tt-train computes with it: its parameter names and layouts,
weights [out, in], padded vocabulary rows ignored, tied `fc`. `HfModel` reads a safetensors
checkpoint as transformers computes with it. Each family (ttconv.families) runs its layers on
them from the pieces here: norms, causal attention, RoPE on adjacent pairs (2i, 2i+1) as tt-train
applies it or on the pairs (i, i + D/2) ("rotate half") as transformers does, and the RoPE
decoder blocks of both sides (kv_linear = [k; v] or separate k and v, q/k norms per head before
RoPE when present). The two sides are written apart on purpose: `ttconv check` compares them.
Parameters are read one layer at a time, and of the embeddings and the output head only the
tokens' rows and a vocabulary chunk at a time (LogitStats), so memory stays about one layer
whatever the vocabulary; each layer runs as one jit-compiled function.
"""
import functools
import math

import numpy as np

from . import bf16
from .errors import MappingError
from .interrupts import import_held
from .mapping import count_tt_layers, find_prefix
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


def jit(*static):
    """jax.jit with the named arguments static (a family's layer functions)."""
    return functools.partial(jax.jit, static_argnames=static)


def causal_attention(q, k, v):
    """q: [heads, T, d]; k, v: [kv heads, T, d] (each shared by heads / kv heads query heads)."""
    group = q.shape[0] // k.shape[0]
    k, v = jnp.repeat(k, group, axis=0), jnp.repeat(v, group, axis=0)
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
    length = q.shape[1]
    scores = jnp.where(jnp.tril(jnp.ones((length, length), bool)), scores, NEG_INF)
    return jax.nn.softmax(scores, axis=-1) @ v


def rms_norm(x, gamma, eps):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * gamma


def layer_norm(x, gamma, beta, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * gamma + beta


def gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def split_heads(x, heads):
    length = x.shape[0]
    return x.reshape(length, heads, -1).transpose(1, 0, 2)


def merge_heads(x):
    return x.transpose(1, 0, 2).reshape(x.shape[1], -1)


# ------------------------------------------------------------------ tt-train's side

def rope_adjacent(x, cos, sin):
    """RoPE on the adjacent pairs (2i, 2i+1), as tt-train applies it."""
    even, odd = x[..., 0::2], x[..., 1::2]
    turned = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return turned.reshape(x.shape)


@functools.partial(jax.jit, static_argnames=("heads", "kv_heads", "eps"))
def _tt_rope_block(x, w, cos, sin, heads, kv_heads, eps):
    """A RoPE decoder block under tt-train's Llama names: kv_linear = [k; v], or k_linear and v_linear;
    q/k norms per head before RoPE when the block has them."""
    a = rms_norm(x, w["attention_norm/gamma"][0], eps)
    q = split_heads(a @ w["attention/q_linear/weight"].T, heads)
    if "attention/kv_linear/weight" in w:
        k, v = jnp.split(a @ w["attention/kv_linear/weight"].T, 2, axis=-1)
    else:
        k, v = a @ w["attention/k_linear/weight"].T, a @ w["attention/v_linear/weight"].T
    k, v = split_heads(k, kv_heads), split_heads(v, kv_heads)
    if "attention/q_norm/gamma" in w:  # each head normalized before RoPE
        q = rms_norm(q, w["attention/q_norm/gamma"][0], eps)
        k = rms_norm(k, w["attention/k_norm/gamma"][0], eps)
    attended = causal_attention(rope_adjacent(q, cos, sin), rope_adjacent(k, cos, sin), v)
    x = x + merge_heads(attended) @ w["attention/out_linear/weight"].T
    m = rms_norm(x, w["mlp_norm/gamma"][0], eps)
    return x + (jax.nn.silu(m @ w["mlp/w1/weight"].T) * (m @ w["mlp/w3/weight"].T)) @ w["mlp/w2/weight"].T


class TtModel:
    """The model held in a tt-train file or checkpoint directory (formats.open_tt), run as tt-train runs it
    by its family (a Family); others: the families find_prefix names when the file holds another."""

    def __init__(self, tt, family, shape, eps, others=()):
        self.tt, self.family, self.shape, self.eps = tt, family, shape, eps
        self.params = tt.weights()
        self.prefix = find_prefix(self.params, family, tt.path, others)
        self._scratch = ScratchBuffer()
        self._check()

    def tensor(self, name):
        """A tensor under the prefix, whole, as float32 [rows, cols]."""
        param = self.params.get(f"{self.prefix}/{name}")
        if param is None:
            raise MappingError(f"{self.tt.path}: no tensor {self.prefix}/{name}")
        return self.tt.read_values(param.data).reshape(param.rows, param.cols)

    def rows(self, name):
        """A tensor's row count, or None when the file has no such tensor."""
        param = self.params.get(f"{self.prefix}/{name}")
        return param.rows if param is not None else None

    def row_range(self, name, first, last):
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
        return np.stack([self.row_range(name, int(i), int(i) + 1)[0] for i in unique])[where]

    def embedded(self, ids):
        """The token embeddings of ids (tok_emb, or the tied fc)."""
        embedding = "tok_emb/weight" if f"{self.prefix}/tok_emb/weight" in self.params else "fc/weight"
        return jnp.asarray(self._picked_rows(embedding, ids))

    def head_rows(self, first, last):
        """Rows [first, last) of the output head (fc), float32."""
        return self.row_range("fc/weight", first, last)

    @property
    def context(self):
        """Positions the tt model can take."""
        return self.family.tt_context(self)

    def _check(self):
        layers = count_tt_layers(self.params, self.prefix, self.family)
        fc = self.params.get(f"{self.prefix}/fc/weight")
        problems = [f"{name} has {self.rows(name)} rows in the tt file, the checkpoint's config says {rows}"
                    for name, rows in self.family.tt_expected_rows(self.shape).items()
                    if layers and self.rows(name) != rows]
        if layers != self.shape.num_blocks:
            problems.append(f"{layers} blocks in the tt file, {self.shape.num_blocks} layers in the checkpoint")
        if fc.cols != self.shape.embedding_dim:
            problems.append(f"embedding width {fc.cols} in the tt file, {self.shape.embedding_dim} in the checkpoint")
        if fc.rows < self.shape.vocab_size:
            problems.append(f"{fc.rows} vocabulary rows in the tt file, {self.shape.vocab_size} in the checkpoint")
        if problems:
            raise MappingError(f"{self.tt.path} and the checkpoint describe different models: {'; '.join(problems)}")

    def run_blocks(self, x, block, rename=None, progress=None):
        """x through every block, block(x, weights) with the block's weights by name within it (renamed by
        rename, when given), one layer in memory at a time."""
        template = self.family.block_0.replace("_0/", "_{}/")
        rename = rename or (lambda name: name)
        for i in range(self.shape.num_blocks):
            head = f"{self.prefix}/{template.format(i)}"
            w = {rename(name[len(head):]): jnp.asarray(self.tensor(name[len(self.prefix) + 1:]))
                 for name in self.params if name.startswith(head)}
            x = block(x, w)
            x.block_until_ready()
            del w  # before the next layer is read
            if progress is not None:
                progress.advance(1)
        return x

    def final_states(self, ids, progress=None):
        """The normed last hidden states [T, embedding] for token ids (numpy int array): logits are
        these times the head's rows (head_rows), taken a vocabulary chunk at a time."""
        return np.asarray(self.family.tt_forward(self, ids, progress))


def tt_rope_forward(model, ids, progress=None, rename=None):
    """A RoPE decoder's forward pass as tt-train computes it (rename: its block names to Llama's)."""
    shape = model.shape
    cos, sin = _angles(shape, len(ids))
    x = model.run_blocks(model.embedded(ids), lambda x, w: _tt_rope_block(x, w, cos, sin, shape.num_heads,
                                                                          shape.num_groups, model.eps),
                         rename, progress)
    return rms_norm(x, model.tensor("ln_fc/gamma")[0], model.eps)


# ------------------------------------------------------------------ transformers' side

def _rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


@functools.partial(jax.jit, static_argnames=("heads", "kv_heads", "eps", "adjacent_pairs"))
def _hf_rope_layer(x, t, cos, sin, heads, kv_heads, eps, adjacent_pairs):
    """A Llama decoder layer, or a Qwen3 one (q/k norms per head before RoPE)."""
    normed = rms_norm(x, t["input_layernorm.weight"], eps)
    q = split_heads(normed @ t["self_attn.q_proj.weight"].T, heads)
    k = split_heads(normed @ t["self_attn.k_proj.weight"].T, kv_heads)
    v = split_heads(normed @ t["self_attn.v_proj.weight"].T, kv_heads)
    if "self_attn.q_norm.weight" in t:
        q = rms_norm(q, t["self_attn.q_norm.weight"], eps)
        k = rms_norm(k, t["self_attn.k_norm.weight"], eps)
    if adjacent_pairs:  # q/k rows read as Meta-interleaved
        q, k = rope_adjacent(q, cos, sin), rope_adjacent(k, cos, sin)
    else:
        full_cos, full_sin = jnp.concatenate([cos, cos], -1), jnp.concatenate([sin, sin], -1)
        q = q * full_cos + _rotate_half(q) * full_sin
        k = k * full_cos + _rotate_half(k) * full_sin
    x = x + merge_heads(causal_attention(q, k, v)) @ t["self_attn.o_proj.weight"].T
    post = rms_norm(x, t["post_attention_layernorm.weight"], eps)
    gate = jax.nn.silu(post @ t["mlp.gate_proj.weight"].T)
    return x + (gate * (post @ t["mlp.up_proj.weight"].T)) @ t["mlp.down_proj.weight"].T


def _float32(ckpt, info, first=0, last=None):
    """Rows [first, last) of a checkpoint tensor (all of it by default) as float32."""
    raw = ckpt.read_rows(info, first, last)
    if info.dtype == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)  # exact: bf16 is float32's high half
    raw = raw.astype(np.float32, copy=False)
    return raw.reshape(info.shape) if first == 0 and last is None else raw


class HfModel:
    """The model of a Hugging Face checkpoint (checkpoint.Checkpoint), run as transformers runs it by its
    family (a Family); with bfloat16, its weights rounded to bfloat16 (nearest even) first, as a
    bfloat16 file holds them. Tensors go by the family's canonical names."""

    def __init__(self, ckpt, family, shape, eps, bfloat16=False):
        self.ckpt, self.family, self.shape, self.eps = ckpt, family, shape, eps
        self.bfloat16 = bfloat16
        self.tensors = {family.canonical_name(name): info for name, info in ckpt.tensors.items()}

    def tensor(self, name, first=0, last=None):
        """Rows [first, last) of a tensor (all of it by default) as float32."""
        if name not in self.tensors:
            raise MappingError(f"{self.ckpt.directory}: the checkpoint has no tensor {name}")
        values = _float32(self.ckpt, self.tensors[name], first, last)
        return bf16.rounded(values) if self.bfloat16 else values

    def picked_rows(self, name, ids):
        """The rows of a tensor that ids name, float32."""
        unique, where = np.unique(ids, return_inverse=True)
        return np.concatenate([self.tensor(name, int(i), int(i) + 1) for i in unique])[where]

    def head_rows(self, first, last):
        """Rows [first, last) of the output head (lm_head, or the tied embedding), float32."""
        return self.tensor(self.family.hf_head_name(self.tensors), first, last)

    def run_layers(self, states, head, layer, progress=None):
        """states through every layer: layer(states, tensors) with the tensors under head.format(i) (by
        name within it, buffers left out), one layer in memory at a time."""
        for i in range(self.shape.num_blocks):
            prefix = head.format(i)
            t = {name[len(prefix):]: jnp.asarray(self.tensor(name)) for name in self.tensors
                 if name.startswith(prefix) and name[len(prefix):] not in BUFFERS and not name.endswith("inv_freq")}
            states = layer(states, t)
            jax.block_until_ready(states)
            del t  # before the next layer is read
            if progress is not None:
                progress.advance(1)
        return states

    def final_states(self, ids, progress=None, adjacent_pairs=(False,)):
        """The normed last hidden states [T, embedding] for token ids, one per entry of adjacent_pairs
        (True reads the checkpoint's q/k rows as Meta-interleaved); all variants share each layer read.
        Logits are these times head_rows, a vocabulary chunk at a time."""
        return [np.asarray(x) for x in self.family.hf_forward(self, ids, progress, adjacent_pairs)]


def hf_rope_forward(model, ids, progress=None, adjacent_pairs=(False,)):
    """A Llama-style decoder's forward pass as transformers computes it, once per q/k reading."""
    shape = model.shape
    states = [jnp.asarray(model.picked_rows("model.embed_tokens.weight", ids))] * len(adjacent_pairs)
    cos, sin = _angles(shape, len(ids))
    states = model.run_layers(states, "model.layers.{}.", lambda states, t: [
        _hf_rope_layer(x, t, cos, sin, shape.num_heads, shape.num_groups, model.eps, pairs)
        for x, pairs in zip(states, adjacent_pairs)], progress)
    norm = model.tensor("model.norm.weight")
    return [rms_norm(x, norm, model.eps) for x in states]


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
