"""Public conversion functions; the command line is a thin layer over these."""
from .convert import open_checkpoint, run_conversion


def convert_llama(init_path, hf_model, output_path, meta_style=False, revision=None, dry_run=False, quiet=True):
    """Convert a Llama-family checkpoint into a tt-train file shaped like init_path.

    hf_model is a local checkpoint folder or a hub id (resolved from the Hugging Face
    cache, downloaded if missing and allowed). meta_style skips the RoPE row permutation
    for checkpoints whose q/k rows are already interleaved. Returns a Report; with
    dry_run nothing is written and report.plan tells what would be done.

    >>> report = convert_llama("examples/llama-mini/init.msgpack", "examples/llama-mini",
    ...                        "out/llama.msgpack")   # doctest: +SKIP
    >>> print(report.summary())                         # doctest: +SKIP
    """
    ckpt = open_checkpoint(hf_model, revision)
    try:
        return run_conversion("llama", init_path, ckpt, output_path, meta_style, dry_run, quiet)
    finally:
        ckpt.close()


def convert_gpt2(init_path, hf_model, output_path, revision=None, dry_run=False, quiet=True):
    """Convert a GPT-2-family checkpoint into a tt-train file shaped like init_path.

    Conv1D weights are transposed, the vocabulary zero-padded and pos_emb cropped to
    the tt model's context. Returns a Report (see convert_llama).

    >>> convert_gpt2("gpt2_init.msgpack", "gpt2", "out/gpt2.msgpack")  # doctest: +SKIP
    """
    ckpt = open_checkpoint(hf_model, revision)
    try:
        return run_conversion("gpt2", init_path, ckpt, output_path, False, dry_run, quiet)
    finally:
        ckpt.close()


def to_hf(family, tt_path, hf_model, output_dir, dtype="f32", meta_style=False, revision=None, quiet=True):
    """Write a Hugging Face checkpoint folder (model.safetensors, config.json, tokenizer files)
    from a tt-train file, undoing the permutation, transposes, kv concatenation, padding and tying.

    hf_model is the original checkpoint (folder or hub id); dtype is "f32", "bf16" or "f16"
    (round to nearest even). Returns a Report (see convert_llama).

    >>> to_hf("llama", "out/llama.msgpack", "examples/llama-mini", "out/hf", dtype="bf16")  # doctest: +SKIP
    """
    from .export_hf import export_hf

    return export_hf(family, tt_path, hf_model, output_dir, dtype, meta_style, revision, quiet)
