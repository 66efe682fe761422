"""A Hugging Face config.json and tensor layout for a model known only from a tt-train header.

A ttml checkpoint's header holds the training script's model_config (sizes, heads and groups,
RoPE theta and scaling, context); its tensors tell the rest (tying, MLP width, Qwen3's
head_dim). What neither holds (norm epsilons) takes tt-train's own values, which the user can
override; each family (ttconv.families) writes its config from the header with the readers here.
ConfigCheckpoint then stands in for the original checkpoint: a config and the names and shapes of
the tensors transformers expects, without data.
"""
import json
import math
import re

from ..errors import CheckpointError, TtconvError
from .checkpoint import TensorInfo


def _need(fields, key, where):
    """A header field that must be a positive number; CheckpointError naming it otherwise."""
    value = fields.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{where}: the header's model_config has no usable {key} ({value!r}); give "
                              "--hf_model, the checkpoint it was trained from")
    return value


def common_fields(fields, sizes, where):
    """(embedding, layers, heads, context, vocabulary) that every family's config takes from a header;
    sizes["vocab_rows"]: the vocabulary rows the file holds."""
    embedding = int(_need(fields, "embedding_dim", where))
    layers = int(_need(fields, "num_blocks", where))
    heads = int(_need(fields, "num_heads", where))
    context = int(_need(fields, "max_sequence_length", where))
    vocab = int(fields.get("vocab_size") or sizes["vocab_rows"])
    if vocab > sizes["vocab_rows"]:
        raise CheckpointError(f"{where}: the header's vocab_size {vocab} is larger than the {sizes['vocab_rows']} "
                              "vocabulary rows the file holds")
    return embedding, layers, heads, context, vocab


def _rope_scaling(fields):
    """config.json's llama3 rope_scaling from a header's scaling fields (None when it has none)."""
    factor = fields.get("scaling_factor") or 0.0
    if not factor:
        return None
    return {"rope_type": "llama3", "factor": float(factor), "high_freq_factor": float(fields["high_freq_factor"]),
            "low_freq_factor": float(fields["low_freq_factor"]),
            "original_max_position_embeddings": int(fields["original_context_length"])}


def apply_overrides(config, overrides):
    """config with --set KEY=VALUE pairs applied (VALUE read as JSON, else kept as a string)."""
    config = dict(config)
    for item in overrides or ():
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise TtconvError(f"--set {item!r}: expected KEY=VALUE, e.g. --set rms_norm_eps=1e-6")
        try:
            config[key] = json.loads(text)
        except ValueError:
            config[key] = text
    return config


def decoder_config(fields, tied, sizes, where, architecture, model_type, default_theta, epsilon):
    """config.json of a Llama-style decoder from a header (see common_fields; sizes also says
    "intermediate" and, where the tensors tell it, "head_dim"); epsilon: (key, value) of its norms."""
    embedding, layers, heads, context, vocab = common_fields(fields, sizes, where)
    key, value = epsilon
    return {"architectures": [architecture], "model_type": model_type, "vocab_size": vocab,
            "hidden_size": embedding, "intermediate_size": sizes["intermediate"], "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": int(fields.get("num_groups") or heads),
            "head_dim": int(sizes.get("head_dim") or fields.get("head_dim") or embedding // heads),
            "max_position_embeddings": context, "rope_theta": float(fields.get("theta") or default_theta),
            "rope_scaling": _rope_scaling(fields), key: value, "hidden_act": "silu",
            "attention_bias": bool(fields.get("attention_bias", False)), "tie_word_embeddings": tied}


def rope_model_shapes(config, qk_norms):
    """{tensor name: shape} of a Llama-style decoder's config.json (qk_norms: with q/k norm vectors)."""
    e, v, d = config["hidden_size"], config["vocab_size"], config["head_dim"]
    q, kv, inter = config["num_attention_heads"] * d, config["num_key_value_heads"] * d, config["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (v, e)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, e), p + "self_attn.k_proj.weight": (kv, e),
                       p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.o_proj.weight": (e, q)})
        if qk_norms:
            shapes.update({p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)})
        shapes.update({p + "mlp.gate_proj.weight": (inter, e), p + "mlp.up_proj.weight": (inter, e),
                       p + "mlp.down_proj.weight": (e, inter), p + "input_layernorm.weight": (e,),
                       p + "post_attention_layernorm.weight": (e,)})
    shapes["model.norm.weight"] = (e,)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (v, e)
    return shapes


class ConfigCheckpoint:
    """A stand-in for a Hugging Face checkpoint built from a config: the tensors transformers
    expects (names and shapes, float32), no data but the zeros of `zeros`, no folder."""

    def __init__(self, config, shapes, where, zeros=()):
        """shapes: {tensor name: shape} of the model the config describes (Family.hf_shapes); zeros:
        patterns of the names among them whose values are all zero (Family.header_zeros)."""
        self.directory = None
        self.where = where
        self.config = config
        self._zeros = re.compile("|".join(zeros) or r"(?!)")
        self.tensors = {name: TensorInfo(name, None, "F32", tuple(shape), 0, 4 * math.prod(shape))
                        for name, shape in shapes.items()}

    def config_int(self, key, default=None):
        value = self.config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"{self.where}: {key} is {value!r}, expected an integer")
        return value

    def read_bytes(self, info, offset, buffer):
        if self._zeros.fullmatch(info.name):
            buffer[:] = 0
            return buffer
        raise CheckpointError(f"{self.where}: {info.name} is not in the file and there is no original checkpoint "
                              "to take it from; give --hf_model")

    def close(self):
        pass
