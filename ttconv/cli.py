"""Command line: python -m ttconv {llama,qwen3,gpt2,inspect,to-hf,check,config} ..."""
import argparse
import math
import logging
import os
import sys

from . import __version__, interrupts
from .errors import TtconvError
from .families import DIRECTORY_ONLY, FAMILIES
from .tt.formats import FORMATS
from .tt.training import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS, SCHEDULERS
from .tt.ttbuild import LAYOUTS
from .verify import TOLERANCE
from .export_hf import DTYPE_CHOICES
from .hf.safetensors_out import DEFAULT_MAX_SHARD_SIZE

log = logging.getLogger("ttconv")

EXIT_ERROR = 1

DESCRIPTION = """\
Convert Hugging Face Llama, Qwen3 and GPT-2 checkpoints (safetensors) into what tt-train
loads, without torch: msgpack weight files (the upstream scripts' format, older tt-train) or
the checkpoint directories today's tt-train saves and loads (--format flatbuffer:
metadata.flatbuffer + one bfloat16 .tensorbin per tensor; Qwen3 only as directories). The
output has exactly the entries of the init file or directory you give, in its order, or is
built from config.json.

inspect, to-hf and check read both formats."""

LLAMA_HELP = """\
Fill a tt-train Llama init file or checkpoint directory with the weights of a
Llama-family checkpoint (TinyLlama, Llama 2/3/3.x and same-shaped models), or build one
from config.json (--no-init; --format flatbuffer for a directory, as today's tt-train
loads). Same flags as llama_export.py. With only -t, just the tokenizer is written; with
-t and explicit -i (or --no-init) and -o, both."""

QWEN3_HELP = """\
Fill a tt-train Qwen3 checkpoint directory (a model dump or a training state) with the
weights of a Qwen3 checkpoint (Qwen3-0.6B to 8B and same-shaped models), or build one from
config.json. Directories only: tt-train has Qwen3 only since it saves checkpoint
directories. q/k rows and the q/k norm weights are put in tt-train's adjacent-pair RoPE
order, the vocabulary is zero-padded to a multiple of 32."""

GPT2_HELP = """\
Fill a tt-train GPT-2 init file or checkpoint directory with the weights of a
GPT-2-family checkpoint (gpt2, gpt2-medium/large/xl, distilgpt2), or build one from
config.json (-o alone; --format flatbuffer for a directory). Same usage as
gpt2_export.py: INPUT_FILE OUTPUT_FILE, or -i/-o."""


def _common(parser, subcommand=True):
    # On subcommands the flags must not reset what was given before the subcommand.
    default = argparse.SUPPRESS if subcommand else False
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="show a traceback on errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="no progress bar or notices; warnings and the closing summary line remain")


def _hf_options(parser, default_model, tokenizer_help="also (or, without explicit input/output, only) write the "
                                                       "tokenizer.json that tt-train reads to this path"):
    parser.add_argument("--hf_model", default=default_model,
                        help=f"checkpoint folder or Hugging Face hub id (default: {default_model})")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) when --hf_model is a hub id")
    parser.add_argument("-t", "--dump_tokenizer_path", metavar="DUMP_TOKENIZER_PATH", help=tokenizer_help)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (tt key <- checkpoint tensors) and write nothing")


def _file_options(parser, format_help="msgpack: a tt-train msgpack file (the upstream scripts' format, tt-train "
                                      "before late 2025); flatbuffer: a checkpoint directory as today's tt-train "
                                      "saves and loads (metadata.flatbuffer + .tensorbin files). Default: the "
                                      "input's format, else msgpack"):
    parser.add_argument("--format", choices=FORMATS, help=format_help)
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
                        help="write the model under PREFIX instead of the input's prefix (a Llama training save "
                             "is under transformer/llama; training loads llama/llama)")
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
                                 "SFT trainer pickle (read without running anything in it)"):
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


def _tp_option(parser):
    parser.add_argument("--tp", type=_positive, metavar="N",
                        help="a ttml (Python-side) checkpoint gathered from N-way tensor parallelism: its fused "
                             "rows (qkv, kv, gate|up) are interleaved rank by rank; the file does not record N "
                             "(default: 1)")


def build_parser():
    from . import kernels

    parser = argparse.ArgumentParser(prog="ttconv", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    reason = f"; {kernels.FALLBACK_REASON}" if kernels.FALLBACK_REASON else ""
    parser.add_argument("--version", action="version",
                        version=f"ttconv {__version__} (backend: {kernels.BACKEND}{reason})")
    _common(parser, subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    llama = sub.add_parser("llama", help="convert a Llama-family checkpoint", description=LLAMA_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    llama.add_argument("-i", "--input_path", metavar="INPUT_PATH",
                       help="what to fill: a msgpack init file, -s dump or training save, or a checkpoint "
                            "directory (default: data/tinyllama_init.msgpack; when that does not exist, the "
                            "output is built from config.json)")
    llama.add_argument("-o", "--output_path", metavar="OUTPUT_PATH",
                       help="output file or directory (default: data/tinyllama_exported.msgpack, or "
                            "data/tinyllama_exported for a directory)")
    _hf_options(llama, "TinyLlama/TinyLlama_v1.1")
    llama.add_argument("--meta_style", nargs="?", const=True, default=False, type=_auto_only, metavar="auto",
                       help="q/k rows are already interleaved (Meta style): skip the RoPE row permutation; "
                            "`--meta_style auto` decides from the checkpoint's loss on a text with q/k read both ways")
    llama.add_argument("--text", metavar="FILE",
                       help="UTF-8 text for --meta_style auto (default: a built-in English sample)")
    _file_options(llama)
    _common(llama)

    qwen3 = sub.add_parser("qwen3", help="convert a Qwen3-family checkpoint into a checkpoint directory",
                           description=QWEN3_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    qwen3.add_argument("-i", "--input_path", metavar="INPUT_DIR",
                       help="checkpoint directory to fill: a model dump (-s) or a training state tt-train saved "
                            "(default: none; the directory is built from config.json)")
    qwen3.add_argument("-o", "--output_path", metavar="OUTPUT_DIR",
                       help=f"output directory (default: {DEFAULT_QWEN3_OUTPUT})")
    _hf_options(qwen3, "Qwen/Qwen3-0.6B", "also write the tokenizer.json that tt-train reads to this path")
    _file_options(qwen3, "flatbuffer (the default and the only choice: no tt-train that reads msgpack has Qwen3)")
    _common(qwen3)

    gpt2 = sub.add_parser("gpt2", help="convert a GPT-2-family checkpoint", description=GPT2_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    gpt2.add_argument("input_pos", nargs="?", metavar="INPUT_FILE",
                      help="tt-train init file (or checkpoint directory) to fill")
    gpt2.add_argument("output_pos", nargs="?", metavar="OUTPUT_FILE", help="output file (or directory)")
    gpt2.add_argument("-i", "--input_file", help="same as INPUT_FILE")
    gpt2.add_argument("-o", "--output_file", help="same as OUTPUT_FILE")
    _hf_options(gpt2, "gpt2")
    _file_options(gpt2)
    _common(gpt2)

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
    to_hf.add_argument("family", choices=FAMILIES)
    _tt_input(to_hf)
    to_hf.add_argument("--hf_model",
                       help="the original checkpoint (folder or hub id): config, tensor names and tokenizer come "
                            "from it; required except for a ttml (Python-side) checkpoint, whose header's "
                            "model_config gives config.json (see --set)")
    to_hf.add_argument("-o", "--output_dir", required=True, metavar="OUT_DIR",
                       help="folder to write (a new path, or an earlier export, which is replaced whole)")
    to_hf.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
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
                            "rms_norm_eps (default 1e-5 for Llama, 1e-6 for Qwen3, as ttml), layer_norm_epsilon "
                            "(GPT-2, default 1e-5), bos_token_id, eos_token_id; repeatable")
    to_hf.add_argument("--revision", help="hub revision when --hf_model is a hub id")
    _common(to_hf)

    check = sub.add_parser("check", help="run a tt-train file's model beside the Hugging Face model it came from",
                           description="Run the model a tt-train msgpack file or checkpoint directory holds (as "
                                       "tt-train computes it) and the "
                                       "Hugging Face checkpoint (as transformers computes it) on the same tokens, "
                                       "in jax on the CPU; compare their losses, logits and top-1 predictions. "
                                       "Exit 0 when they agree, 1 when not.")
    check.add_argument("family", choices=FAMILIES)
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
    config.add_argument("family", choices=FAMILIES)
    config.add_argument("--hf_model", required=True, help="checkpoint folder or hub id")
    config.add_argument("--revision", help="hub revision when --hf_model is a hub id")
    config.add_argument("-o", "--output", metavar="FILE", help="YAML file to write (default: standard output)")
    config.add_argument("--model-path",
                        help="model_path in the YAML: the tt-train file or checkpoint directory "
                             "(default: data/tt_model.msgpack; for qwen3 data/tt_model)")
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


DEFAULT_INIT = "data/tinyllama_init.msgpack"
DEFAULT_OUTPUT = "data/tinyllama_exported.msgpack"
DEFAULT_OUTPUT_DIR = "data/tinyllama_exported"
DEFAULT_QWEN3_OUTPUT = "data/qwen3_exported"


def _output_format(args, init_path):
    """The format a conversion writes: --format, else the input's, else msgpack."""
    from .tt.ttdir import is_checkpoint_dir

    if args.format:
        return args.format
    return "flatbuffer" if init_path and is_checkpoint_dir(init_path) else "msgpack"


def _paths(args, family):
    """(init file or None to build from config.json, output, tokenizer only?)"""
    if family == "llama":
        given_in, given_out = args.input_path, args.output_path
        init_path = given_in or (DEFAULT_INIT if os.path.exists(DEFAULT_INIT) and args.format != "flatbuffer"
                                 else None)
        default_output = DEFAULT_OUTPUT_DIR if _output_format(args, init_path) == "flatbuffer" else DEFAULT_OUTPUT
        output_path = given_out or default_output
    elif family == "qwen3":
        given_in, given_out = args.input_path, args.output_path
        init_path, output_path = given_in, given_out or DEFAULT_QWEN3_OUTPUT
    else:
        for flag, positional, name in ((args.input_file, args.input_pos, "INPUT_FILE and -i"),
                                       (args.output_file, args.output_pos, "OUTPUT_FILE and -o")):
            if flag and positional and flag != positional:
                raise TtconvError(f"{name} name different files; give one of them")
        if args.input_pos and not args.output_pos and not args.input_file:
            raise TtconvError(
                f"gpt2 was given one file ({args.input_pos}); give INPUT_FILE OUTPUT_FILE to fill a tt-train "
                "file, or -o OUTPUT_FILE alone to build it from config.json without an init file"
            )
        given_in, given_out = args.input_file or args.input_pos, args.output_file or args.output_pos
        init_path, output_path = given_in, given_out
    if args.no_init:
        if given_in:
            raise TtconvError("--no-init builds the file from config.json; do not give an input file as well")
        init_path = None
    # As with the upstream scripts, -t without explicit input and output writes only the tokenizer (Qwen3 has no
    # upstream script: there -t is always in addition).
    tokenizer_only = bool(args.dump_tokenizer_path) and family != "qwen3" and \
        not (given_out and (given_in or args.no_init))
    if family == "gpt2" and not tokenizer_only and not output_path:
        raise TtconvError("gpt2 needs OUTPUT_FILE (or -o): with INPUT_FILE it fills that file, without it the file "
                          "is built from config.json; or -t alone for the tokenizer only")
    return init_path, output_path, tokenizer_only


def _conversion(args, family):
    from . import api, kernels
    from .hf.tokenizer import export_tokenizer

    init_path, output_path, tokenizer_only = _paths(args, family)
    if args.dump_tokenizer_path and not args.dry_run:
        export_tokenizer(family, args.hf_model, args.dump_tokenizer_path, args.revision)
        log.info("wrote tokenizer to %s", args.dump_tokenizer_path)
    if tokenizer_only:
        if args.output_path if family == "llama" else (args.output_file or args.output_pos):
            log.info("only the tokenizer was written: as with the upstream script, -t writes the model too only "
                     "with explicit input and output; add --no-init to build the model file from config.json")
        return 0
    if kernels.FALLBACK_REASON:
        log.info("using the slower jax.numpy fallback: %s", kernels.FALLBACK_REASON)
    llama_only = dict(meta_style=args.meta_style, text_path=args.text) if family == "llama" else {}
    report = api.convert(family, args.hf_model, output_path, init=init_path, format=args.format,
                         layout=args.layout, scheduler=args.scheduler, learning_rate=args.learning_rate,
                         max_steps=args.max_steps, vocab_multiple=args.vocab_multiple,
                         keep_optimizer_state=args.keep_optimizer_state, prefix=args.prefix,
                         revision=args.revision, dry_run=args.dry_run, quiet=args.quiet, **llama_only)
    if args.dry_run:
        from .inspection import print_plan

        print_plan(report)
        return 0
    print(f"ttconv: wrote {output_path}: {report.summary()}", file=sys.stderr)
    if args.dump_config:
        api.write_config(family, args.hf_model, args.dump_config, model_path=output_path,
                         tokenizer_path=args.dump_tokenizer_path or "data/tokenizer.json", scheduler=args.scheduler,
                         learning_rate=args.learning_rate, vocab_multiple=args.vocab_multiple, revision=args.revision,
                         max_steps=args.max_steps)
        log.info("wrote tt-train config to %s", args.dump_config)
    return 0


def _check(args):
    import json

    from .api import check

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
    if args.command in FAMILIES:
        return _conversion(args, args.command)
    if args.command == "inspect":
        from .inspection import inspect_file

        return inspect_file(args.file, as_json=args.json)
    if args.command == "check":
        return _check(args)
    if args.command == "config":
        from .api import write_config

        model_path = args.model_path or ("data/tt_model" if args.family in DIRECTORY_ONLY
                                         else "data/tt_model.msgpack")
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
    if args.command == "llama":
        if args.output_path:
            return args.output_path
        return DEFAULT_OUTPUT_DIR if _output_format(args, args.input_path) == "flatbuffer" else DEFAULT_OUTPUT
    if args.command == "qwen3":
        return args.output_path or DEFAULT_QWEN3_OUTPUT
    if args.command == "gpt2":
        return args.output_file or args.output_pos
    return None


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
