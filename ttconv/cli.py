"""Command line: python -m ttconv {FAMILY,inspect,to-hf,check,config} ...

Each family (ttconv.families) has its conversion command, built from its module: its help,
its own arguments and its paths; to-hf, check and config take the family as their first argument."""
import argparse
import math
import logging
import os
import sys

from . import families, interrupts, version_text
from .errors import TtconvError
from .tt.formats import FORMATS
from .tt.training import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS, SCHEDULERS
from .tt.ttbuild import LAYOUTS
from .hf.safetensors_out import DEFAULT_MAX_SHARD_SIZE
from .options import EXPORT_DTYPES

log = logging.getLogger("ttconv")

EXIT_ERROR = 1

DESCRIPTION = """\
Convert Hugging Face {names} checkpoints (safetensors) into what tt-train
loads, without torch: msgpack weight files (the upstream scripts' format, older tt-train) or
the checkpoint directories today's tt-train saves and loads (--format flatbuffer:
metadata.flatbuffer + one bfloat16 .tensorbin per tensor; {directory_only} only as directories). The
output has exactly the entries of the init file or directory you give, in its order, or is
built from config.json. {ttml_only} is written as the checkpoints tt-train's Python side (ttml)
saves and loads: tt-train's C++ side does not have it.

inspect and to-hf read all three; check reads msgpack files, directories and
the ttml checkpoints of the families it runs."""


def _joined(names):
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _description():
    converted = [f for f in families.ALL if f.formats]
    return DESCRIPTION.format(names=_joined([f.display for f in converted if "ttml" not in f.formats]),
                              directory_only=", ".join(f.display for f in converted if f.formats == ("flatbuffer",)),
                              ttml_only=_joined([f.display for f in converted if f.formats == ("ttml",)]))


def _common(parser, subcommand=True):
    # On subcommands the flags must not reset what was given before the subcommand.
    default = argparse.SUPPRESS if subcommand else False
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show a traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bar or notices; warnings and the closing summary line remain")


def _hf_options(parser, default_model, tokenizer_help):
    parser.add_argument("--hf_model", default=default_model,
                        help=f"checkpoint folder or Hugging Face hub id (default: {default_model})")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) when --hf_model is a hub id")
    parser.add_argument("-t", "--dump_tokenizer_path", metavar="DUMP_TOKENIZER_PATH", help=tokenizer_help)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (tt key <- checkpoint tensors) and write nothing")


FORMAT_HELP = ("msgpack: a tt-train msgpack file (the upstream scripts' format, tt-train before late 2025); "
               "flatbuffer: a checkpoint directory as today's tt-train saves and loads (metadata.flatbuffer + "
               ".tensorbin files). Default: the input's format, else msgpack")


def _file_options(parser, format_help=None):
    parser.add_argument("--format", choices=FORMATS, help=format_help or FORMAT_HELP)
    built = parser.add_argument_group("without an init file (built from config.json)")
    built.add_argument("--no-init", action="store_true",
                       help="build the whole output from config.json even if an init file exists")
    built.add_argument("--layout", choices=LAYOUTS, default="training",
                       help="training: the model where training loads it plus zero AdamW moments, step counter 0 "
                            "and a fresh scheduler state, which tt-train's training mode loads; model: the model "
                            "only, as a -s dump holds it (default: training)")
    _state_choices(built)
    filled = parser.add_argument_group("filling a training save or training state")
    filled.add_argument("--keep-optimizer-state", action="store_true",
                        help="keep the optimizer moments and step counters of a training save or directory "
                             "byte for byte (by default they are reset: they belonged to the old weights)")
    filled.add_argument("--prefix", metavar="PREFIX",
                        help="write the model under PREFIX instead of the input's prefix" + "".join(
                            f" (a {f.display} training save is under {f.save_prefix}; training loads {f.load_prefix})"
                            for f in families.ALL if f.save_prefix != f.load_prefix))
    parser.add_argument("--dump-config", metavar="FILE",
                        help="also write the tt-train YAML training config for the output to FILE")


def _state_choices(parser):
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="identity",
                        help="scheduler_type whose fresh state is written (default: identity)")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE, metavar="LR",
                        help=f"learning rate of the fresh scheduler state and the YAML (default: {DEFAULT_LEARNING_RATE:g})")
    parser.add_argument("--vocab-multiple", type=_positive, default=32, metavar="N",
                        help="round the vocabulary up to a multiple of N, as tt-train does (default: 32; "
                             "multiply by the device count under tensor parallelism)")
    parser.add_argument("--max-steps", type=_positive, default=DEFAULT_MAX_STEPS, metavar="N",
                        help=f"max_steps of the YAML; a directory's warmup_linear state warms up over 10%% of it "
                             f"(default: {DEFAULT_MAX_STEPS})")


def _tt_input(parser, what="tt-train msgpack file, checkpoint directory (or its metadata.flatbuffer), or a "
                                 "checkpoint tt-train's Python side (ttml) saved: a ttml.checkpointing stream or an "
                                 "SFT trainer pickle (read without running anything in it), or its LoRA recipes' "
                                 "adapter file lora_step_N.safetensors"):
    parser.add_argument("tt_path", nargs="?", metavar="TT_PATH", help=what)
    parser.add_argument("-i", "--input_path", metavar="TT_PATH", help="same as TT_PATH")


def _tt_path(args):
    """The tt-train input of to-hf and check, given positionally or with -i (not two different ones)."""
    if args.tt_path and args.input_path and args.tt_path != args.input_path:
        raise TtconvError(f"TT_PATH ({args.tt_path}) and -i ({args.input_path}) name different inputs; give one")
    path = args.tt_path or args.input_path
    if not path:
        raise TtconvError(f"{args.command} needs the tt-train file or directory: TT_PATH or -i TT_PATH")
    return path


def _auto_only(text):
    if text != "auto":
        raise argparse.ArgumentTypeError(f"takes no value or 'auto', not {text!r}")
    return "auto"


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, not {text!r}")
    return value


def _lora_options(parser):
    parser.add_argument("--lora-alpha", type=float, metavar="ALPHA",
                        help="a LoRA checkpoint's alpha (LoraConfig alpha; tt-train does not save it): scale = "
                             "ALPHA / r; required for LoRA checkpoints unless the file records it")
    parser.add_argument("--rslora", action="store_true", help="the adapters were trained with rsLoRA: scale = "
                                                               "ALPHA / sqrt(r)")


def _epsilon_defaults():
    """What --set's help says of the norm epsilons a ttml header lacks: each key with ttml's defaults."""
    keys = {}
    for family in families.ALL:
        key, value = family.header_epsilon
        keys.setdefault(key, []).append(f"{value:g} for {family.display}")
    return ", ".join(f"{key} (default {', '.join(values)}, as ttml)" for key, values in keys.items())


def _model_path_defaults():
    paths = {}
    for family in families.ALL:
        if family.config_model_path:
            paths.setdefault(family.config_model_path, []).append(family.name)
    first, *others = paths
    return first + "".join(f"; for {', '.join(paths[path])} {path}" for path in others)


def _family_choices():
    return [name for family in families.ALL for name in (family.name,) + family.aliases]


def _tp_option(parser):
    parser.add_argument("--tp", type=_positive, metavar="N",
                        help="a ttml (Python-side) checkpoint gathered from N-way tensor parallelism: its fused "
                             "rows (qkv, kv, gate|up; a Gated DeltaNet's in_proj_qkv rows and conv tap channels) are "
                             "interleaved rank by rank; the file does not record N (default: 1)")


def _ttml_options(parser):
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) when --hf_model is a hub id")
    parser.add_argument("--dtype", choices=("bf16", "f32"), default="bf16",
                        help="the tensors' precision in the file (default bf16, as ttml trains; f32 keeps float32)")
    parser.add_argument("--ep", type=_positive, metavar="D",
                        help="write the experts as ttml's expert-parallel stacks over D devices (moe_type "
                             "sparse_ep: per layer ffn/w_gate_J, w_up_J [D, 1, I, H] and w_down_J [D, 1, H, I], "
                             "slice r expert r*E/D+J); default: one module per expert (moe_type dense)")
    parser.add_argument("--tp", type=_positive, default=1, metavar="N",
                        help="the tensor-parallel degree the run will use: the vocabulary is padded to a "
                             "multiple of lcm(32, N) rows (default 1: 32)")
    parser.add_argument("--layout", choices=("model", "training"), default="model",
                        help="model: the model only (what ttml.checkpointing.load_checkpoint restores into a "
                             "model); training: also AdamW's optimizer group, zero moments and steps 0 "
                             "(default model)")
    parser.add_argument("--learning-rate", type=float, default=DEFAULT_LEARNING_RATE, metavar="LR",
                        help=f"AdamW's lr in a training layout (default {DEFAULT_LEARNING_RATE:g})")
    parser.add_argument("--max-seq-len", type=_positive, metavar="N",
                        help="the header's max_sequence_length, the context ttml trains with (default: "
                             "config.json's max_position_embeddings)")
    parser.add_argument("--allow-lossy", action="store_true",
                        help="write the file even where ttml computes the model otherwise (a nonzero router bias, "
                             "RoPE scaling, another rms_norm_eps, ...), warning of each: the run starts from a "
                             "slightly different model")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (ttml tensor <- checkpoint tensors) and write nothing")


class CommandOptions:
    """The argument groups every conversion command shares, for Family.add_arguments."""

    hf = staticmethod(_hf_options)
    files = staticmethod(_file_options)
    ttml = staticmethod(_ttml_options)
    auto_only = staticmethod(_auto_only)


def build_parser():
    parser = argparse.ArgumentParser(prog="ttconv", description=_description(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    _common(parser, subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    for family in (f for f in families.ALL if f.formats):  # the families ttconv converts into tt-train files
        command = sub.add_parser(family.name, aliases=list(family.aliases), help=family.summary,
                                 description=family.description, formatter_class=argparse.RawDescriptionHelpFormatter)
        family.add_arguments(command, CommandOptions)
        command.set_defaults(convert=family)
        _common(command)

    inspect = sub.add_parser("inspect", help="list the parameters of a tt-train msgpack file or checkpoint directory",
                             description="Say what a tt-train msgpack file (init file, -s dump, training save, "
                                         "ttconv or upstream output) or checkpoint directory (model dump or "
                                         "training state) holds, and list its model, optimizer and scheduler "
                                         "apart: every tensor with shape, size, data type and flags; for a msgpack "
                                         "file the variant index and number encoding, for a directory the "
                                         "tensor file's layout, device count and name. Directories are read "
                                         "from their headers only.")
    inspect.add_argument("file", metavar="PATH",
                         help="a msgpack file, a checkpoint directory or its metadata.flatbuffer, or a ttml "
                              "(Python-side) checkpoint: format, step, model_config, optimizer and tensors")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(inspect)

    to_hf = sub.add_parser("to-hf", help="write a Hugging Face checkpoint from a tt-train file or directory",
                           description="Turn a tt-train msgpack file or checkpoint directory (model dump or "
                                       "training state) back into a Hugging Face checkpoint folder "
                                       "(model.safetensors, or shards with model.safetensors.index.json; "
                                       "config.json, generation config and tokenizer files), undoing the "
                                       "tilization, RoPE permutation, transposes, kv concatenation, padding and "
                                       "tying. Streaming: one chunk of rows at a time, whatever the model size. "
                                       "Values are exact in the file's own precision; a training state's "
                                       "full-precision master weights are exported where it holds them. The "
                                       "folder appears whole or not at all. Also reads checkpoints of tt-train's "
                                       "Python side (ttml), with or without the original. A LoRA checkpoint "
                                       "becomes a PEFT adapter folder (adapter_config.json, "
                                       "adapter_model.safetensors), or with --merge-lora the merged model.")
    to_hf.add_argument("family", choices=_family_choices())
    _tt_input(to_hf)
    to_hf.add_argument("--hf_model",
                       help="the original checkpoint (folder or hub id): config, tensor names and tokenizer come "
                            "from it; required except for a ttml (Python-side) checkpoint, whose header's "
                            "model_config gives config.json (see --set)")
    to_hf.add_argument("-o", "--output_dir", required=True, metavar="OUT_DIR",
                       help="folder to write (a new path, or an earlier export, which is replaced whole)")
    to_hf.add_argument("--dtype", choices=EXPORT_DTYPES, default="auto",
                       help="dtype of the written tensors: auto keeps the tt file's own precision (bf16 for a "
                            "directory as tt-train saves it, f32 for msgpack and full-precision master weights); "
                            "f32, bf16 and f16 round to nearest even (default: auto)")
    to_hf.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                       help="split weights larger than SIZE into model-0000K-of-0000N.safetensors files with "
                            "model.safetensors.index.json, as save_pretrained does (5GB, 500MB, 2GiB or bytes; "
                            f"default: {DEFAULT_MAX_SHARD_SIZE})")
    to_hf.add_argument("--meta_style", action="store_true", help="do not undo the RoPE permutation")
    _tp_option(to_hf)
    _lora_options(to_hf)
    to_hf.add_argument("--merge-lora", action="store_true",
                       help="for a LoRA checkpoint: write the full model with every adapted weight W + scale * B A "
                            "(computed in float32, written in the model's precision or --dtype) instead of the "
                            "default PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    to_hf.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="set KEY in the written config.json (VALUE read as JSON, e.g. --set rms_norm_eps=1e-6); "
                            "for a ttml checkpoint exported without --hf_model, what its header does not hold: "
                            f"{_epsilon_defaults()}, bos_token_id, eos_token_id; repeatable")
    to_hf.add_argument("--revision", help="hub revision when --hf_model is a hub id")
    _common(to_hf)

    check = sub.add_parser("check", help="run a tt-train file's model beside the Hugging Face model it came from",
                           description="Run the model a tt-train msgpack file or checkpoint directory holds (as "
                                       "tt-train computes it) and the "
                                       "Hugging Face checkpoint (as transformers computes it) on the same tokens, "
                                       "in jax on the CPU; compare their losses, logits and top-1 predictions. "
                                       "Exit 0 when they agree, 1 when not.")
    check.add_argument("family", choices=_family_choices())
    _tt_input(check, "a ttconv output, an upstream output, or a file or checkpoint directory tt-train saved")
    check.add_argument("--hf_model", required=True, help="the checkpoint it came from: folder or hub id")
    check.add_argument("--revision", help="hub revision when --hf_model is a hub id")
    _tp_option(check)
    _lora_options(check)
    check.add_argument("--text", metavar="FILE", help="UTF-8 text to run on (default: a built-in English sample)")
    check.add_argument("--tokens", type=_positive, default=128, metavar="N",
                       help="use the first N tokens of the text, capped at the context (default: 128)")
    check.add_argument("--json", action="store_true",
                       help="print one JSON object (tt_loss, hf_loss, max_abs_logit_diff, top1_agreement, tokens, ok)")
    _common(check)

    config = sub.add_parser("config", help="write the tt-train YAML training config for a checkpoint",
                            description="Write the tt-train YAML (training_config with transformer_config) "
                                        "that matches a checkpoint's config.json and the file ttconv writes for it.")
    config.add_argument("family", choices=_family_choices())
    config.add_argument("--hf_model", required=True, help="checkpoint folder or hub id")
    config.add_argument("--revision", help="hub revision when --hf_model is a hub id")
    config.add_argument("-o", "--output", metavar="FILE", help="YAML file to write (default: standard output)")
    config.add_argument("--model-path",
                        help="model_path in the YAML: the tt-train file or checkpoint directory "
                             f"(default: {_model_path_defaults()})")
    config.add_argument("--tokenizer-path", default="data/tokenizer.json",
                        help="tokenizer_path in the YAML (default: data/tokenizer.json)")
    _state_choices(config)
    _common(config)
    return parser


def _setup_logging(quiet):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ttconv: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def _output_format(args, init_path):
    """The format a conversion writes: --format, else the input's, else msgpack."""
    from .tt.ttdir import is_checkpoint_dir

    if args.format:
        return args.format
    return "flatbuffer" if init_path and is_checkpoint_dir(init_path) else "msgpack"


def _paths(args, family):
    """(init file or None to build from config.json, output, tokenizer only?)"""
    given_in, given_out = family.given_paths(args)
    init_path, output_path = family.default_paths(args, given_in, given_out, lambda init: _output_format(args, init))
    if args.no_init:
        if given_in:
            raise TtconvError("--no-init builds the file from config.json; do not give an input file as well")
        init_path = None
    # As with the upstream scripts, -t without explicit input and output writes only the tokenizer (a family
    # with no upstream script writes it in addition, always).
    tokenizer_only = family.tokenizer_only(args, given_in, given_out)
    if not tokenizer_only and not output_path:
        raise TtconvError(family.output_required)
    return init_path, output_path, tokenizer_only


def _ttml_conversion(args, family):
    from . import api, kernels

    if kernels.FALLBACK_REASON:
        log.info("using the slower jax.numpy fallback: %s", kernels.FALLBACK_REASON)
    report = api.convert_ttml(family.name, args.hf_model, args.output_path, dtype=args.dtype, layout=args.layout,
                              tp=args.tp, ep=args.ep, learning_rate=args.learning_rate,
                              max_sequence_length=args.max_seq_len, allow_lossy=args.allow_lossy,
                              revision=args.revision, dry_run=args.dry_run,
                              quiet=args.quiet)
    if args.dry_run:
        from .inspection import print_plan

        print_plan(report)
        return 0
    print(f"ttconv: wrote {args.output_path}: {report.summary()}", file=sys.stderr)
    return 0


def _conversion(args, family):
    from . import api, kernels

    if "ttml" in family.formats:
        return _ttml_conversion(args, family)
    init_path, output_path, tokenizer_only = _paths(args, family)
    if args.dump_tokenizer_path and not args.dry_run:
        api.export_tokenizer(family.name, args.hf_model, args.dump_tokenizer_path, args.revision)
        log.info("wrote tokenizer to %s", args.dump_tokenizer_path)
    if tokenizer_only:
        if family.given_paths(args)[1]:
            log.info("only the tokenizer was written: as with the upstream script, -t writes the model too only "
                     "with explicit input and output; add --no-init to build the model file from config.json")
        return 0
    if kernels.FALLBACK_REASON:
        log.info("using the slower jax.numpy fallback: %s", kernels.FALLBACK_REASON)
    report = api.convert(family.name, args.hf_model, output_path, init=init_path, format=args.format,
                         layout=args.layout, scheduler=args.scheduler, learning_rate=args.learning_rate,
                         max_steps=args.max_steps, vocab_multiple=args.vocab_multiple,
                         keep_optimizer_state=args.keep_optimizer_state, prefix=args.prefix,
                         revision=args.revision, dry_run=args.dry_run, quiet=args.quiet,
                         **family.convert_options(args))
    if args.dry_run:
        from .inspection import print_plan

        print_plan(report)
        return 0
    print(f"ttconv: wrote {output_path}: {report.summary()}", file=sys.stderr)
    if args.dump_config:
        api.write_config(family.name, args.hf_model, args.dump_config, model_path=output_path,
                         tokenizer_path=args.dump_tokenizer_path or "data/tokenizer.json", scheduler=args.scheduler,
                         learning_rate=args.learning_rate, vocab_multiple=args.vocab_multiple, revision=args.revision,
                         max_steps=args.max_steps)
        log.info("wrote tt-train config to %s", args.dump_config)
    return 0


def _check(args):
    import json

    from .api import check
    from .verify import TOLERANCE

    tt_path = _tt_path(args)
    result = check(args.family, tt_path, args.hf_model, args.text, args.tokens, args.revision, args.quiet, args.tp,
                   args.lora_alpha, args.rslora)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        source = args.text or "the built-in English sample"
        print(f"{result.tokens} tokens of {source}")
        print(f"  tt-train file  {tt_path}: loss {result.tt_loss:.6f} nats, perplexity {math.exp(result.tt_loss):.4f}")
        rounded = " (weights rounded to bfloat16, as the file holds them)" if result.hf_bfloat16 else ""
        print(f"  Hugging Face   {args.hf_model}{rounded}: loss {result.hf_loss:.6f} nats, "
              f"perplexity {math.exp(result.hf_loss):.4f}")
        print(f"  largest |logit difference| {result.max_abs_logit_diff:.3g}, top-1 agreement {result.top1_agreement:.4f}")
        if result.layout is not None:
            print(f"  {result.layout.describe()}")
        print(f"verdict: {'the same model' if result.ok else 'DIFFERENT'} (losses to {TOLERANCE:g} relative, "
              "every top-1 prediction)")
    if not result.ok:
        print(f"ttconv: check failed: {result.reason}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _run(args):
    if getattr(args, "convert", None):
        return _conversion(args, args.convert)
    if args.command == "inspect":
        from .inspection import inspect_file

        return inspect_file(args.file, as_json=args.json)
    if args.command == "check":
        return _check(args)
    if args.command == "config":
        from .api import write_config

        model_path = args.model_path or families.get(args.family).config_model_path
        text = write_config(args.family, args.hf_model, args.output, model_path=model_path,
                            tokenizer_path=args.tokenizer_path, scheduler=args.scheduler,
                            learning_rate=args.learning_rate, vocab_multiple=args.vocab_multiple,
                            revision=args.revision, max_steps=args.max_steps)
        if args.output:
            log.info("wrote tt-train config to %s", args.output)
        else:
            sys.stdout.write(text)
        return 0
    from .api import to_hf

    report = to_hf(args.family, _tt_path(args), args.hf_model, args.output_dir, args.dtype, args.meta_style,
                   args.revision, args.quiet, args.max_shard_size, args.tp, args.overrides, args.lora_alpha,
                   args.rslora, args.merge_lora)
    print(f"ttconv: wrote {args.output_dir}: {report.summary()}", file=sys.stderr)
    return 0


def _one_line(exc):
    if isinstance(exc, OSError) and not isinstance(exc, TtconvError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    return str(exc)


def _output_of(args):
    """The file a conversion command writes last, or None."""
    family = getattr(args, "convert", None)
    return family.output_of(args, lambda init: _output_format(args, init)) if family else None


def _interrupted(exc, output, args):
    """Exit status and the one line for a SIGINT or SIGTERM that ended the run (raised at a safe
    point, always before the output was renamed into place)."""
    status, what = interrupts.outcome(exc)
    if args is not None and args.command == "to-hf":
        return status, f"ttconv: {what}; {args.output_dir} was not written"
    target = f"{output} was not written" if output else "no output was written"
    return status, f"ttconv: {what}; {target}"


def main(argv=None):
    """Run one command in this process; returns the exit status. Signal handlers are restored on return."""
    previous = interrupts.install()
    try:
        return run_command(argv)
    finally:
        interrupts.restore(previous)


def run_command(argv=None):
    """Run one command with interrupts.install() in force: one line for every error and signal."""
    output = args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _setup_logging(args.quiet)
        output = _output_of(args)
        status = _run(args)
        interrupts.finish()  # a signal noted after the last safe point came too late to stop anything
        return status
    except BrokenPipeError:
        # stdout went away (e.g. piped into head): stop quietly
        interrupts.finish()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (TtconvError, OSError) as exc:
        # OSError: an I/O failure no check foresaw (a disk error, a file vanishing mid-run)
        interrupts.finish()
        if args is not None and args.verbose:
            raise
        print(f"ttconv: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyboardInterrupt, interrupts.Terminated) as exc:
        interrupts.finish()
        status, line = _interrupted(exc, output, args)
        print(line, file=sys.stderr)
        return status
