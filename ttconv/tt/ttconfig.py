"""The tt-train YAML training config that matches a checkpoint and the file ttconv writes for it.

`training_config` holds the keys tt-train requires (model_type, seed, model_save_interval,
batch_size, num_epochs, max_steps, learning_rate, weight_decay) with ordinary defaults,
the paths of the written files, `tokenizer_type: bpe` and the scheduler; and
`transformer_config` is read off config.json (hfconfig.ModelShape) by the family, with the
vocabulary rounded as in the tt file.
"""
import json

from .training import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS


def rope_transformer_config(shape, vocab_multiple, head_dim=False, rms_norm_eps=False):
    """transformer_config of a RoPE decoder, as tt-train's Llama reads it; head_dim and rms_norm_eps:
    also write those keys (tt-train's Qwen3 reads them)."""
    transformer = {"num_heads": shape.num_heads, "num_groups": shape.num_groups, "embedding_dim": shape.embedding_dim}
    if head_dim:
        transformer["head_dim"] = shape.head_dim  # tt-train's default is 128, not embedding_dim / num_heads
    transformer.update({
        # intermediate_dim written out: tt-train's default is Llama's 8/3 * embedding_dim rounded to 256
        "intermediate_dim": shape.intermediate_dim,
        "dropout_prob": 0.0,
        "num_blocks": shape.num_blocks,
        "vocab_size": shape.tt_vocab(vocab_multiple),
        "max_sequence_length": shape.max_sequence_length,
        "weight_tying": "enabled" if shape.weight_tying else "disabled",
        "runner_type": "default",
        "theta": shape.theta,
    })
    if rms_norm_eps:
        transformer["rms_norm_eps"] = shape.rms_norm_eps
    if shape.rope_scaling:
        transformer["rope_scaling"] = dict(shape.rope_scaling)
    return transformer


def training_config(family, shape, model_path, tokenizer_path, scheduler="identity",
                    learning_rate=DEFAULT_LEARNING_RATE, vocab_multiple=32, max_steps=DEFAULT_MAX_STEPS):
    """The YAML document as nested dicts (insertion order is the order written); family: a Family,
    which writes transformer_config."""
    transformer = family.transformer_config(shape, vocab_multiple)
    return {
        "training_config": {
            "model_type": shape.family,
            "seed": 5489,
            "model_save_interval": 500,
            "batch_size": 8,
            "num_epochs": 1,
            "max_steps": max_steps,
            "learning_rate": learning_rate,
            "weight_decay": 0.01,
            "gradient_accumulation_steps": 1,
            "use_kahan_summation": False,
            "scheduler_type": scheduler,
            "model_path": model_path,
            "tokenizer_type": "bpe",
            "tokenizer_path": tokenizer_path,
            "transformer_config": transformer,
        }
    }


def _scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        mantissa, exponent = text.split("e") if "e" in text else (text, None)
        if exponent is not None and "." not in mantissa:  # 1e-06 is a string to YAML 1.1 readers; 1.0e-06 is not
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, int):
        return repr(value)
    return json.dumps(str(value))  # a double-quoted YAML string, escapes and all


def to_yaml(document, indent=0):
    """Block-style YAML for nested dicts of scalars."""
    lines = []
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"{' ' * indent}{key}:")
            lines.append(to_yaml(value, indent + 2))
        else:
            lines.append(f"{' ' * indent}{key}: {_scalar(value)}")
    return "\n".join(lines)
