"""What a Hugging Face config.json says about a model, in tt-train's terms.

tt-train's Llama and Qwen3 have no biases, full attention over the whole context and
only Llama 3 style RoPE scaling (Qwen3 adds q/k norms, and its RoPE needs a head_dim that
is a multiple of 32, at most 256); its GPT-2 has a 4E MLP. A config asking for anything
else is refused with one line naming the feature, for conversions as for files built
from the config alone.
"""
from dataclasses import dataclass
from typing import Optional

from ..errors import CheckpointError
from ..families import FAMILIES, FAMILY_NAMES


@dataclass
class ModelShape:
    """Sizes and options of a Llama, Qwen3 or GPT-2 model, as tt-train's transformer_config names them."""

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

    def tt_vocab(self, multiple=32):
        """Vocabulary rows in the tt file: vocab_size rounded up to a multiple (32, times the device
        count under tensor parallelism)."""
        return -(-self.vocab_size // multiple) * multiple


def _rope(config, where):
    """(theta, rope_scaling dict for tt-train or None) from rope_theta/rope_scaling or transformers
    5.x rope_parameters."""
    params = config.get("rope_parameters") or {}
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) or params.get("rope_type") or "default"
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        _refuse(where, f"RoPE scaling {kind!r} (tt-train has Llama 3 scaling only)")
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


def _refuse(where, feature):
    raise CheckpointError(f"{where}: {feature}, which tt-train cannot represent")


def _check_model_type(ckpt, family):
    model_type = ckpt.config.get("model_type")
    if model_type is None and any(str(name).startswith("Qwen3") for name in ckpt.config.get("architectures") or []):
        model_type = "qwen3"
    if model_type is None:
        if family == "qwen3":
            raise CheckpointError(f"{ckpt.directory}/config.json names no model_type; 'ttconv qwen3' converts "
                                  "Qwen3 checkpoints (model_type 'qwen3')")
        return
    expected = model_type if model_type in FAMILIES else "llama"  # other model_types: Llama-shaped or refused
    if expected != family:
        raise CheckpointError(f"{ckpt.directory} is a {model_type!r} checkpoint, not {FAMILY_NAMES[family]}"
                              + (f"; use 'ttconv {expected}'" if model_type in FAMILIES else ""))


def _attention(ckpt, where):
    """(heads, kv heads, head_dim) of a Llama- or Qwen3-family config."""
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


def _rope_model(ckpt, where, family, sliding):
    """The ModelShape of a Llama- or Qwen3-family config; sliding: whether a layer attends through a
    window."""
    config = ckpt.config
    heads, kv_heads, head_dim = _attention(ckpt, where)
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            _refuse(where, f"{flag} is true (biases in a {FAMILY_NAMES[family]}-family model)")
    context = ckpt.config_int("max_position_embeddings", 2048)
    window = config.get("sliding_window")
    if window and sliding and window < context:
        _refuse(where, f"sliding_window {window} is shorter than the context of {context} positions")
    theta, rope_scaling = _rope(config, where)
    return ModelShape(
        family=family, embedding_dim=ckpt.config_int("hidden_size"), num_blocks=ckpt.config_int("num_hidden_layers"),
        num_heads=heads, num_groups=kv_heads, head_dim=head_dim, intermediate_dim=ckpt.config_int("intermediate_size"),
        vocab_size=ckpt.config_int("vocab_size"), max_sequence_length=context,
        weight_tying=bool(config.get("tie_word_embeddings", False)), theta=theta, rope_scaling=rope_scaling,
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
    )


def _llama(ckpt, where):
    return _rope_model(ckpt, where, "llama", ckpt.config.get("use_sliding_window", True))


def _qwen3(ckpt, where):
    """Qwen3: a layer attends through sliding_window when layer_types says "sliding_attention" or, in
    configs without layer_types, when use_sliding_window is on from layer max_window_layers on."""
    config = ckpt.config
    layers = ckpt.config_int("num_hidden_layers")
    if config.get("layer_types"):
        sliding = "sliding_attention" in config["layer_types"]
    else:
        sliding = bool(config.get("use_sliding_window", False)) and \
            int(config.get("max_window_layers", layers) or 0) < layers
    shape = _rope_model(ckpt, where, "qwen3", sliding)
    if shape.head_dim % 32 or not 0 < shape.head_dim <= 256:
        _refuse(where, f"head_dim {shape.head_dim} (tt-train's RoPE needs a multiple of 32 up to 256)")
    if shape.embedding_dim % 32:
        _refuse(where, f"hidden_size {shape.embedding_dim} (tt-train's Qwen3 needs a multiple of 32)")
    return shape


def _gpt2(ckpt, where):
    config = ckpt.config
    embd = ckpt.config_int("n_embd")
    heads = ckpt.config_int("n_head")
    if embd % heads:
        raise CheckpointError(f"{where}: n_embd {embd} is not a multiple of n_head {heads}")
    inner = config.get("n_inner")
    if inner is not None and inner != 4 * embd:
        _refuse(where, f"n_inner is {inner} (tt-train's GPT-2 MLP is 4 * n_embd = {4 * embd})")
    return ModelShape(
        family="gpt2", embedding_dim=embd, num_blocks=ckpt.config_int("n_layer"), num_heads=heads,
        num_groups=heads, head_dim=embd // heads, intermediate_dim=4 * embd,
        vocab_size=ckpt.config_int("vocab_size"), max_sequence_length=ckpt.config_int("n_positions", 1024),
        weight_tying=bool(config.get("tie_word_embeddings", True)),
    )


def model_shape(family, ckpt):
    """The ModelShape of a checkpoint's config.json; CheckpointError for another family or a feature
    tt-train cannot represent."""
    _check_model_type(ckpt, family)
    where = f"{ckpt.directory}/config.json"
    return {"llama": _llama, "qwen3": _qwen3, "gpt2": _gpt2}[family](ckpt, where)
