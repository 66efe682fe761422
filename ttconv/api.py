"""Public conversion functions; the command line is a thin layer over these."""
import logging

from .convert import open_checkpoint, run_conversion
from .errors import TtconvError
from .training import DEFAULT_LEARNING_RATE

log = logging.getLogger("ttconv")


def _convert(family, init_path, hf_model, output_path, meta_style, revision, dry_run, quiet, keep_optimizer_state,
             prefix, layout, scheduler, learning_rate, vocab_multiple, text_path=None):
    ckpt = open_checkpoint(hf_model, revision)
    build = dict(layout=layout, scheduler=scheduler, learning_rate=learning_rate, vocab_multiple=vocab_multiple)
    try:
        if meta_style == "auto":
            meta_style = _decide_meta_style(ckpt, text_path, quiet)
        return run_conversion(family, init_path, ckpt, output_path, meta_style, dry_run, quiet,
                              keep_optimizer_state, prefix, build)
    finally:
        ckpt.close()


def _decide_meta_style(ckpt, text_path, quiet):
    from .verify import decide_meta_style, read_text

    decision = decide_meta_style(ckpt, read_text(text_path), quiet=quiet)
    log.info(decision.describe())
    if not decision.decided:
        raise TtconvError(
            f"--meta_style auto: the losses with q/k read both ways are too close to call "
            f"({decision.hf:.4f} vs {decision.meta:.4f} nats; random or untrained weights?); "
            "give --meta_style or leave it out explicitly"
        )
    return decision.meta_style


def convert_llama(init_path, hf_model, output_path, meta_style=False, revision=None, dry_run=False, quiet=True,
                  keep_optimizer_state=False, prefix=None, layout="training", scheduler="identity",
                  learning_rate=DEFAULT_LEARNING_RATE, vocab_multiple=32, text_path=None):
    """Convert a Llama-family checkpoint into a tt-train file shaped like init_path.

    init_path is an init file, a -s dump or a training save; None builds the file from
    config.json instead (layout "training": model, zero AdamW moments and a fresh `scheduler`
    state at `learning_rate`; "model": the model only; vocabulary rounded up to a multiple of
    vocab_multiple). A training save's optimizer state is reset unless keep_optimizer_state;
    prefix moves the model's keys. hf_model is a local checkpoint folder or a hub id.
    meta_style skips the RoPE row permutation for checkpoints whose q/k rows are already
    interleaved; "auto" decides it from the checkpoint's loss on text_path (a built-in
    English sample when None) with q/k read both ways. Returns a Report; with dry_run nothing is written and report.plan tells
    what would be done.

    >>> report = convert_llama("examples/llama-mini/init.msgpack", "examples/llama-mini",
    ...                        "out/llama.msgpack")   # doctest: +SKIP
    >>> print(report.summary())                         # doctest: +SKIP
    """
    return _convert("llama", init_path, hf_model, output_path, meta_style, revision, dry_run, quiet,
                    keep_optimizer_state, prefix, layout, scheduler, learning_rate, vocab_multiple, text_path)


def convert_gpt2(init_path, hf_model, output_path, revision=None, dry_run=False, quiet=True,
                 keep_optimizer_state=False, prefix=None, layout="training", scheduler="identity",
                 learning_rate=DEFAULT_LEARNING_RATE, vocab_multiple=32):
    """Convert a GPT-2-family checkpoint into a tt-train file shaped like init_path (None: built from
    config.json, see convert_llama).

    Conv1D weights are transposed, the vocabulary zero-padded and pos_emb cropped to
    the tt model's context. Returns a Report (see convert_llama).

    >>> convert_gpt2("gpt2_init.msgpack", "gpt2", "out/gpt2.msgpack")  # doctest: +SKIP
    """
    return _convert("gpt2", init_path, hf_model, output_path, False, revision, dry_run, quiet,
                    keep_optimizer_state, prefix, layout, scheduler, learning_rate, vocab_multiple)


def to_hf(family, tt_path, hf_model, output_dir, dtype="f32", meta_style=False, revision=None, quiet=True):
    """Write a Hugging Face checkpoint folder (model.safetensors, config.json, tokenizer files)
    from a tt-train file or checkpoint directory (a model file or dump, or a training save),
    undoing the tilization, permutation, transposes, kv concatenation, padding and tying.

    hf_model is the original checkpoint (folder or hub id); dtype is "f32", "bf16" or "f16"
    (round to nearest even). Returns a Report (see convert_llama).

    >>> to_hf("llama", "out/llama.msgpack", "examples/llama-mini", "out/hf", dtype="bf16")  # doctest: +SKIP
    """
    from .export_hf import export_hf

    return export_hf(family, tt_path, hf_model, output_dir, dtype, meta_style, revision, quiet)


def write_config(family, hf_model, output_path=None, model_path="data/tt_model.msgpack",
                 tokenizer_path="data/tokenizer.json", scheduler="identity", learning_rate=DEFAULT_LEARNING_RATE,
                 vocab_multiple=32, revision=None):
    """The tt-train YAML training config for a checkpoint (written to output_path when given);
    returns the YAML text.

    >>> print(write_config("llama", "examples/llama-mini"))  # doctest: +SKIP
    """
    from .hfconfig import model_shape
    from .output import atomic_output
    from .ttconfig import to_yaml, training_config

    ckpt = open_checkpoint(hf_model, revision)
    try:
        shape = model_shape(family, ckpt)
    finally:
        ckpt.close()
    text = to_yaml(training_config(shape, model_path, tokenizer_path, scheduler, learning_rate, vocab_multiple)) + "\n"
    if output_path:
        with atomic_output(output_path) as out:
            out.write(text.encode("utf-8"))
    return text


def check(family, tt_path, hf_model, text_path=None, tokens=128, revision=None, quiet=True):
    """Run the model of a tt-train file or checkpoint directory (as tt-train computes it) beside the Hugging Face checkpoint
    (as transformers computes it) on the same tokens; returns a check.CheckResult with tt_loss,
    hf_loss, max_abs_logit_diff, top1_agreement, tokens, ok (and, for Llama, the q/k layout losses).

    >>> ttconv.check("llama", "out/llama.msgpack", "examples/llama-mini").ok  # doctest: +SKIP
    """
    from .verify import check as run_check

    return run_check(family, tt_path, hf_model, text_path, tokens, revision, quiet)
