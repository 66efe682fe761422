"""What a Hugging Face config.json says about a model, in tt-train's terms: the ModelShape and
the readers that families share (attention sizes, RoPE settings, refusals).

A config asking for anything tt-train cannot represent is refused with one line naming the
feature, for conversions as for files built from the config alone; each family (ttconv.families)
says what its tt-train model has.
"""
from dataclasses import dataclass
from typing import Optional

from ..errors import CheckpointError


@dataclass
class ModelShape:
    """Sizes and options of a model, as tt-train's transformer_config names them (family: its name)."""

    family: str
    embedding_dim: int
    num_blocks: int
    num_heads: int
    num_groups: int
    head_dim: int
    intermediate_dim: int
    vocab_size: int
    max_sequence_length: int
    weight_tying: bool
    theta: Optional[float] = None
    rope_scaling: Optional[dict] = None
    rms_norm_eps: Optional[float] = None
    details: Optional[dict] = None  # sizes only the family's own code reads (Qwen3.5's linear-attention heads)

    def tt_vocab(self, multiple=32):
        """Vocabulary rows in the tt file: vocab_size rounded up to a multiple (32, times the device
        count under tensor parallelism)."""
        return -(-self.vocab_size // multiple) * multiple


def rope_settings(config, where):
    """(theta, rope_scaling dict for tt-train or None) from rope_theta/rope_scaling or transformers
    5.x rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type") or "default"
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        refuse(where, f"RoPE scaling {kind!r} (tt-train has Llama 3 scaling only)")
    source = scaling if scaling.get("rope_type", scaling.get("type")) == "llama3" else params
    try:
        rope_scaling = {
            "scaling_factor": float(source["factor"]),
            "high_freq_factor": float(source["high_freq_factor"]),
            "low_freq_factor": float(source["low_freq_factor"]),
            "original_context_length": int(source["original_max_position_embeddings"]),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: llama3 RoPE scaling without a usable {exc}") from None
    return float(theta), rope_scaling


def refuse(where, feature):
    """CheckpointError: the config asks for a feature tt-train cannot represent."""
    raise CheckpointError(f"{where}: {feature}, which tt-train cannot represent")


def attention_sizes(ckpt, where):
    """(heads, kv heads, head_dim) of a config with hidden_size, num_attention_heads and (optionally)
    num_key_value_heads and head_dim."""
    hidden = ckpt.config_int("hidden_size")
    heads = ckpt.config_int("num_attention_heads")
    kv_heads = ckpt.config_int("num_key_value_heads", heads)
    if ckpt.config.get("head_dim") is not None:
        head_dim = ckpt.config_int("head_dim")
    elif hidden % heads:
        raise CheckpointError(
            f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} and there is no head_dim"
        )
    else:
        head_dim = hidden // heads
    if heads % kv_heads:
        raise CheckpointError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    return heads, kv_heads, head_dim


def rope_model_shape(ckpt, where, family, sliding):
    """The ModelShape of a config of a RoPE decoder without biases (family: a Family); sliding: whether a
    layer attends through a window."""
    config = ckpt.config
    heads, kv_heads, head_dim = attention_sizes(ckpt, where)
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            refuse(where, f"{flag} is true (biases in a {family.display}-family model)")
    context = ckpt.config_int("max_position_embeddings", 2048)
    window = config.get("sliding_window")
    if window and sliding and window < context:
        refuse(where, f"sliding_window {window} is shorter than the context of {context} positions")
    theta, rope_scaling = rope_settings(config, where)
    return ModelShape(
        family=family.name, embedding_dim=ckpt.config_int("hidden_size"), num_blocks=ckpt.config_int("num_hidden_layers"),
        num_heads=heads, num_groups=kv_heads, head_dim=head_dim, intermediate_dim=ckpt.config_int("intermediate_size"),
        vocab_size=ckpt.config_int("vocab_size"), max_sequence_length=context,
        weight_tying=bool(config.get("tie_word_embeddings", False)), theta=theta, rope_scaling=rope_scaling,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
    )
