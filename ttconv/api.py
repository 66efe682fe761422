"""Public conversion functions; the command line is a thin layer over these.

Each builds its command's options object (ttconv.options) and hands it to the driver; a family
is named by its command name ("llama", "qwen3", "gpt2", ...: ttconv.families.NAMES).
"""
import dataclasses
import logging

from . import families
from .conversion import open_checkpoint, run_conversion, run_ttml_conversion
from .errors import TtconvError
from .families import gpt2 as _gpt2, llama as _llama
from .options import CheckOptions, ConvertOptions, ExportOptions, TtmlConvertOptions
from .tt.formats import FORMATS
from .tt.training import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS

log = logging.getLogger("ttconv")


def convert(family, hf_model, output, *, init=None, format=None, layout="training", scheduler="identity",
            learning_rate=DEFAULT_LEARNING_RATE, max_steps=DEFAULT_MAX_STEPS, vocab_multiple=32, meta_style=False,
            text_path=None, keep_optimizer_state=False, prefix=None, revision=None, dry_run=False, quiet=True):
    """Convert a Hugging Face checkpoint (a local folder or a hub id) of family "llama", "qwen3" or
    "gpt2" into a tt-train msgpack file or checkpoint directory at output; returns a Report (with
    dry_run nothing is written and report.plan tells what would be done). Qwen3 is written as a
    checkpoint directory only: no tt-train that reads msgpack has it.

    init is what to fill: an init file, a -s dump or a training save (msgpack), or a checkpoint
    directory (model dump or training state); the output takes its format. Without init the output is
    built from config.json in `format` ("msgpack", the default, or "flatbuffer"): layout "training"
    (the model, zero AdamW moments and a fresh `scheduler` state at `learning_rate`; warmup_linear
    over `max_steps`) or "model" (the model only, as -s dumps it); the vocabulary rounded up to a
    multiple of vocab_multiple. A training state's optimizer moments and step counters are reset
    unless keep_optimizer_state; prefix moves the model's keys. For Llama, meta_style skips the RoPE
    row permutation (q/k rows already interleaved); "auto" decides it from the checkpoint's loss on
    text_path (a built-in English sample when None).

    >>> report = ttconv.convert("llama", "examples/llama-mini", "out/llama",
    ...                         format="flatbuffer")           # doctest: +SKIP
    >>> print(report.summary())                                 # doctest: +SKIP
    """
    family = families.get(family)
    if format not in (None,) + FORMATS:
        raise TtconvError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if meta_style and not family.meta_style:
        having = " and ".join(f.display for f in families.ALL if f.meta_style)
        raise TtconvError(f"meta_style applies to {having}-family checkpoints only")
    if len(family.formats) == 1:
        if format not in (None,) + family.formats:
            raise TtconvError(f"{family.name} cannot be written as {format}: tt-train has {family.display} only "
                              "since it saves checkpoint directories, and no tt-train that reads msgpack has it; "
                              f"leave out --format {format}")
        format = family.formats[0]
    options = ConvertOptions(family=family, hf_model=hf_model, output=output, init=init, format=format, layout=layout,
                             scheduler=scheduler, learning_rate=learning_rate, max_steps=max_steps,
                             vocab_multiple=vocab_multiple, meta_style=meta_style, text_path=text_path,
                             keep_optimizer_state=keep_optimizer_state, prefix=prefix, revision=revision,
                             dry_run=dry_run, quiet=quiet)
    ckpt = open_checkpoint(hf_model, revision)
    try:
        if meta_style == "auto":
            options = dataclasses.replace(options, meta_style=_decide_meta_style(family, ckpt, text_path, quiet))
        return run_conversion(ckpt, options)
    finally:
        ckpt.close()


def convert_ttml(family, hf_model, output, *, dtype="bf16", layout="model", tp=1, ep=None,
                 learning_rate=DEFAULT_LEARNING_RATE, max_sequence_length=None, allow_lossy=False, revision=None,
                 dry_run=False, quiet=True):
    """Convert a Hugging Face checkpoint (a local folder or a hub id) of a family tt-train has only on its
    Python side ("deepseek") into a ttml checkpoint at output, as ttml.checkpointing saves one; returns a
    Report. dtype "bf16" or "f32"; layout "model" or "training" (AdamW's zero moments at learning_rate
    too); the vocabulary padded to lcm(32, tp); ep: the experts as ep-way expert-parallel stacks (None: a
    module per expert); max_sequence_length: the header's context (None: max_position_embeddings);
    allow_lossy: write what ttml computes otherwise (a nonzero router bias, YaRN, ...) with a warning
    naming it instead of refusing.

    >>> report = ttconv.convert_ttml("deepseek", "deepseek-ai/DeepSeek-V2-Lite", "v2lite.pkl",
    ...                              ep=8)                         # doctest: +SKIP
    """
    family = families.get(family)
    options = TtmlConvertOptions(family=family, hf_model=hf_model, output=output, dtype=dtype, layout=layout, tp=tp,
                                 ep=ep, learning_rate=learning_rate, max_sequence_length=max_sequence_length,
                                 allow_lossy=allow_lossy, revision=revision, dry_run=dry_run, quiet=quiet)
    ckpt = open_checkpoint(hf_model, revision)
    try:
        return run_ttml_conversion(ckpt, options)
    finally:
        ckpt.close()


def _decide_meta_style(family, ckpt, text_path, quiet):
    from .verify import decide_meta_style, read_text

    decision = decide_meta_style(family, ckpt, read_text(text_path), quiet=quiet)
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
    """convert("llama", ...) with the arguments of ttconv's first releases (init_path: the file or
    directory to fill, None to build a msgpack file from config.json); returns a Report.

    >>> report = convert_llama("examples/llama-mini/init.msgpack", "examples/llama-mini",
    ...                        "out/llama.msgpack")   # doctest: +SKIP
    """
    return convert(_llama.LLAMA.name, hf_model, output_path, init=init_path, meta_style=meta_style, revision=revision,
                   dry_run=dry_run, quiet=quiet, keep_optimizer_state=keep_optimizer_state, prefix=prefix,
                   layout=layout, scheduler=scheduler, learning_rate=learning_rate, vocab_multiple=vocab_multiple,
                   text_path=text_path)


def convert_gpt2(init_path, hf_model, output_path, revision=None, dry_run=False, quiet=True,
                 keep_optimizer_state=False, prefix=None, layout="training", scheduler="identity",
                 learning_rate=DEFAULT_LEARNING_RATE, vocab_multiple=32):
    """convert("gpt2", ...) with the arguments of ttconv's first releases (Conv1D weights transposed,
    the vocabulary zero-padded, pos_emb cropped to the tt model's context); returns a Report.

    >>> convert_gpt2("gpt2_init.msgpack", "gpt2", "out/gpt2.msgpack")  # doctest: +SKIP
    """
    return convert(_gpt2.GPT2.name, hf_model, output_path, init=init_path, revision=revision, dry_run=dry_run,
                   quiet=quiet, keep_optimizer_state=keep_optimizer_state, prefix=prefix, layout=layout, scheduler=scheduler,
                   learning_rate=learning_rate, vocab_multiple=vocab_multiple)


def to_hf(family, tt_path, hf_model, output_dir, dtype="auto", meta_style=False, revision=None, quiet=True,
          max_shard_size="5GB", tp=None, overrides=(), lora_alpha=None, rslora=False, merge_lora=False):
    """Write a Hugging Face checkpoint folder (safetensors weights, config.json, tokenizer files)
    from a tt-train file or checkpoint directory (a model file or dump, or a training save),
    undoing the tilization, permutation, transposes, kv concatenation, padding and tying,
    streaming, atomically.

    hf_model is the original checkpoint (folder or hub id); dtype is "auto" (the tt file's own
    precision: bfloat16 for a directory tt-train saved, float32 for msgpack and master weights),
    "f32", "bf16" or "f16" (round to nearest even). Weights over max_shard_size ("5GB", "500MB")
    are sharded with an index, as save_pretrained does. A tt-train Python-side (ttml) checkpoint may
    come without hf_model (None): its header's model_config gives config.json, and overrides
    ("KEY=VALUE", e.g. "rms_norm_eps=1e-6") set what it does not hold; tp is the tensor-parallel
    degree such a file was gathered from. A LoRA checkpoint becomes a PEFT adapter folder
    (lora_alpha required unless the file records it; rslora: use_rslora), or with merge_lora the
    full checkpoint with the adapters merged. Returns a Report (see convert).

    >>> to_hf("llama", "out/llama.msgpack", "examples/llama-mini", "out/hf", dtype="bf16")  # doctest: +SKIP
    """
    from .export_hf import export_hf

    return export_hf(ExportOptions(family=families.get(family), tt_path=tt_path, hf_model=hf_model,
                                   output_dir=output_dir, dtype=dtype, meta_style=meta_style, revision=revision,
                                   quiet=quiet, max_shard_size=max_shard_size, tp=tp, overrides=tuple(overrides or ()),
                                   lora_alpha=lora_alpha, rslora=rslora, merge_lora=merge_lora))


def write_config(family, hf_model, output_path=None, model_path="data/tt_model.msgpack",
                 tokenizer_path="data/tokenizer.json", scheduler="identity", learning_rate=DEFAULT_LEARNING_RATE,
                 vocab_multiple=32, revision=None, max_steps=DEFAULT_MAX_STEPS):
    """The tt-train YAML training config for a checkpoint (written to output_path when given);
    returns the YAML text.

    >>> print(write_config("llama", "examples/llama-mini"))  # doctest: +SKIP
    """
    from .output import atomic_output
    from .tt.ttconfig import to_yaml, training_config

    family = families.get(family)
    ckpt = open_checkpoint(hf_model, revision)
    try:
        shape = family.model_shape(ckpt)
    finally:
        ckpt.close()
    text = to_yaml(training_config(family, shape, model_path, tokenizer_path, scheduler, learning_rate,
                                   vocab_multiple, max_steps)) + "\n"
    if output_path:
        with atomic_output(output_path) as out:
            out.write(text.encode("utf-8"))
    return text


def check(family, tt_path, hf_model, text_path=None, tokens=128, revision=None, quiet=True, tp=None,
          lora_alpha=None, rslora=False):
    """Run the model of a tt-train file or checkpoint directory (as tt-train computes it) beside the Hugging Face checkpoint
    (as transformers computes it) on the same tokens; returns a check.CheckResult with tt_loss,
    hf_loss, max_abs_logit_diff, top1_agreement, tokens, ok (and, for Llama, the q/k layout losses).
    tp: the tensor-parallel degree a ttml checkpoint was gathered from; a LoRA checkpoint is run
    merged (lora_alpha, rslora as for to_hf).

    >>> ttconv.check("llama", "out/llama.msgpack", "examples/llama-mini").ok  # doctest: +SKIP
    """
    from .verify import check as run_check

    return run_check(CheckOptions(family=families.get(family), tt_path=tt_path, hf_model=hf_model,
                                  text_path=text_path, tokens=tokens, revision=revision, quiet=quiet, tp=tp,
                                  lora_alpha=lora_alpha, rslora=rslora))


def export_tokenizer(family, hf_model, output_path, revision=None):
    """Write the tokenizer of a checkpoint (folder or hub id) in the form tt-train reads, as the family
    makes it (Llama and Qwen3: the Strip decoder removed, ignore_merges deleted, merges as "a b"
    strings; GPT-2: tokenizer.json unchanged, or built from vocab.json + merges.txt); returns
    output_path.

    >>> export_tokenizer("llama", "examples/llama-mini", "out/tokenizer.json")  # doctest: +SKIP
    """
    from .hf.tokenizer import write_tokenizer

    return write_tokenizer(families.get(family), hf_model, output_path, revision)
