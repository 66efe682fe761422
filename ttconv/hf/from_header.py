"""A Hugging Face config.json and tensor layout for a model known only from a tt-train header.

A ttml checkpoint's header holds the training script's model_config (sizes, heads and groups,
RoPE theta and scaling, context); its tensors tell the rest (tying, MLP width, Qwen3's
head_dim). What neither holds (norm epsilons) takes tt-train's own values, which the user can
override. ConfigCheckpoint then stands in for the original checkpoint: a config and the names
and shapes of the tensors transformers expects, without data.
"""
import json
import math

from ..errors import CheckpointError, TtconvError
from .checkpoint import TensorInfo

# What tt-train's Python models use where the header says nothing (ttml's RMSNormLayer: 1e-5;
# model_builders' Qwen3: 1e-6; GPT-2's LayerNorm: 1e-5).
DEFAULT_EPSILON = {"llama": ("rms_norm_eps", 1e-5), "qwen3": ("rms_norm_eps", 1e-6),
                   "gpt2": ("layer_norm_epsilon", 1e-5)}


def _need(fields, key, where):
    value = fields.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{where}: the header's model_config has no usable {key} ({value!r}); give "
                              "--hf_model, the checkpoint it was trained from")
    return value


def _rope_scaling(fields):
    factor = fields.get("scaling_factor") or 0.0
    if not factor:
        return None
    return {"rope_type": "llama3", "factor": float(factor), "high_freq_factor": float(fields["high_freq_factor"]),
            "low_freq_factor": float(fields["low_freq_factor"]),
            "original_max_position_embeddings": int(fields["original_context_length"])}


def hf_config(family, fields, tied, sizes, where):
    """config.json (a dict) for a model_config (fields, flat: its spec's fields beside the common
    ones); tied: one embedding serves both ends; sizes: what the tensors say ("intermediate",
    "head_dim", "vocab_rows")."""
    embedding = int(_need(fields, "embedding_dim", where))
    layers = int(_need(fields, "num_blocks", where))
    heads = int(_need(fields, "num_heads", where))
    context = int(_need(fields, "max_sequence_length", where))
    vocab = int(fields.get("vocab_size") or sizes["vocab_rows"])
    if vocab > sizes["vocab_rows"]:
        raise CheckpointError(f"{where}: the header's vocab_size {vocab} is larger than the {sizes['vocab_rows']} "
                              "vocabulary rows the file holds")
    key, epsilon = DEFAULT_EPSILON[family]
    if family == "gpt2":
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab,
                  "n_embd": embedding, "n_layer": layers, "n_head": heads, "n_positions": context, "n_ctx": context,
                  "n_inner": None, "activation_function": "gelu_new", key: epsilon, "tie_word_embeddings": tied}
        if sizes["intermediate"] != 4 * embedding:
            config["n_inner"] = sizes["intermediate"]
        return config
    groups = int(fields.get("num_groups") or heads)
    head_dim = sizes.get("head_dim") or fields.get("head_dim") or embedding // heads
    config = {"architectures": ["LlamaForCausalLM" if family == "llama" else "Qwen3ForCausalLM"],
              "model_type": family, "vocab_size": vocab, "hidden_size": embedding,
              "intermediate_size": sizes["intermediate"], "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": groups, "head_dim": int(head_dim), "max_position_embeddings": context,
              "rope_theta": float(fields.get("theta") or (10000.0 if family == "llama" else 1000000.0)),
              "rope_scaling": _rope_scaling(fields), key: epsilon, "hidden_act": "silu",
              "attention_bias": bool(fields.get("attention_bias", False)), "tie_word_embeddings": tied}
    if family == "llama":
        config["mlp_bias"] = False
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=layers)
    return config


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


def _shapes(family, config):
    if family == "gpt2":
        e, v, p = config["n_embd"], config["vocab_size"], config["n_positions"]
        inner = config.get("n_inner") or 4 * e
        shapes = {"transformer.wte.weight": (v, e), "transformer.wpe.weight": (p, e)}
        for i in range(config["n_layer"]):
            h = f"transformer.h.{i}."
            shapes.update({h + "ln_1.weight": (e,), h + "ln_1.bias": (e,), h + "attn.c_attn.weight": (e, 3 * e),
                           h + "attn.c_attn.bias": (3 * e,), h + "attn.c_proj.weight": (e, e),
                           h + "attn.c_proj.bias": (e,), h + "ln_2.weight": (e,), h + "ln_2.bias": (e,),
                           h + "mlp.c_fc.weight": (e, inner), h + "mlp.c_fc.bias": (inner,),
                           h + "mlp.c_proj.weight": (inner, e), h + "mlp.c_proj.bias": (e,)})
        shapes.update({"transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,)})
        if not config.get("tie_word_embeddings", True):
            shapes["lm_head.weight"] = (v, e)
        return shapes
    e, v, d = config["hidden_size"], config["vocab_size"], config["head_dim"]
    q, kv, inter = config["num_attention_heads"] * d, config["num_key_value_heads"] * d, config["intermediate_size"]
    shapes = {"model.embed_tokens.weight": (v, e)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (q, e), p + "self_attn.k_proj.weight": (kv, e),
                       p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.o_proj.weight": (e, q)})
        if family == "qwen3":
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
    expects (names and shapes, float32), no data, no folder."""

    def __init__(self, family, config, where):
        self.directory = None
        self.where = where
        self.config = config
        self.tensors = {name: TensorInfo(name, None, "F32", tuple(shape), 0, 4 * math.prod(shape))
                        for name, shape in _shapes(family, config).items()}

    def config_int(self, key, default=None):
        value = self.config.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise CheckpointError(f"{self.where}: {key} is {value!r}, expected an integer")
        return value

    def read_bytes(self, info, offset, buffer):
        raise CheckpointError(f"{self.where}: {info.name} is not in the file and there is no original checkpoint "
                              "to take it from; give --hf_model")

    def close(self):
        pass
