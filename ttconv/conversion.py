"""Conversions: Hugging Face checkpoint + tt-train init file or directory -> the same format, for any family.

What is particular to a model family (its name tables, config, tensors) comes from its Family
object (ttconv.families); this driver runs the same steps for all of them."""
import logging
import os
import time
from dataclasses import dataclass, field

from . import families
from .errors import InputFileError
from .hf.checkpoint import Checkpoint
from .hf.hub import resolve_model
from .mapping import build_plan
from .progress import Progress
from .tt.formats import check_output, conversion_output, output_size, value_bytes
from .tt.ttbuild import BuiltDir, BuiltFile, build_dir, build_file
from .tt.ttdir import TtDir, is_checkpoint_dir
from .tt.ttfile import TtFile
from .tt.ttml import is_ttml_file

log = logging.getLogger("ttconv")


@dataclass
class Report:
    """What a conversion did (or, for a dry run, would do)."""

    plan: object
    output_path: str = None
    tensors: int = 0
    values: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    nonfinite: dict = field(default_factory=dict)
    state: str = ""
    value_bytes: int = 5

    def summary(self):
        rate = self.bytes_written / 1e6 / self.seconds if self.seconds > 0 else 0.0
        state = f"; {self.state}" if self.state else ""
        return (
            f"{self.tensors} tensors, {self.values:,} parameters, {self.bytes_written:,} bytes written "
            f"in {self.seconds:.2f} s ({rate:.0f} MB/s){state}"
        )


def plan_conversion(family, tt, ckpt, meta_style=False, params=None, shape=None):
    """Build the plan (which tt tensor comes from which checkpoint tensors) for the model's
    parameters (params: another set of them, e.g. tt.weights()); family: a Family; shape: the
    checkpoint's ModelShape when already read (else family.model_shape)."""
    layout = family.plan_layout(shape or family.model_shape(ckpt))
    tensors = family.canonical_names(ckpt.tensors, ckpt.directory)
    return build_plan(family, tt, params or tt.parameters("model"), tensors, layout, meta_style, families.ALL)


def _renamer(old_prefix, new_prefix):
    """Key -> key under new_prefix for the model's keys (optimizer keys name bare parameters)."""
    if not new_prefix or new_prefix == old_prefix:
        return lambda key: key
    head = old_prefix + "/"
    return lambda key: new_prefix + key[len(old_prefix):] if key.startswith(head) else key


def write_converted(plan, tt, ckpt, writer, progress, reset_state=True, prefix=None):
    """Write tt's entries, in order, through a format's writer (formats.conversion_output) with the plan's
    tensors filled from the checkpoint (model keys moved under prefix, when given; with reset_state,
    optimizer moments zeroed and step counters set to 0). Returns (NaN/Inf counts by key,
    {"moments": n, "counters": n} reset)."""
    rename = _renamer(plan.prefix, prefix)
    nonfinite, reset = {}, {"moments": 0, "counters": 0}
    for entry in tt.entries:
        key = rename(entry.key)
        target = plan.targets.get(entry.key)
        action = writer.reset_kind(entry) if reset_state and target is None else None
        if target is not None:
            bad = writer.write_target(entry, key, target, ckpt, progress)
            if bad:
                nonfinite[entry.key] = bad
        elif action == "zeros":
            writer.zero_tensor(entry, key)
            reset["moments"] += 1
        elif action == "zero":
            writer.zero_counter(entry, key)
            reset["counters"] += 1
        else:
            writer.copy_entry(entry, key)
    return nonfinite, reset


def _open_source(family, init_path, ckpt, build, quiet, output_format):
    """The tt-train file or directory to fill: init_path, or one built from config.json in output_format."""
    if init_path is None:
        if output_format == "flatbuffer":
            return build_dir(family, ckpt, **build)
        return build_file(family, ckpt, **{k: v for k, v in build.items() if k != "max_steps"})
    if is_ttml_file(init_path):
        raise InputFileError(f"{init_path}: is a tt-train Python-side (ttml) checkpoint, which ttconv reads (to-hf, "
                             "check, inspect) but does not fill: ttml loads Hugging Face weights itself")
    if is_checkpoint_dir(init_path):
        if output_format == "msgpack":
            raise InputFileError(f"{init_path}: is a tt-train checkpoint directory, so the output is one too; "
                                 "--format msgpack fills a msgpack file (or builds one with --no-init)")
        return TtDir(init_path)
    if "msgpack" not in family.formats:
        raise InputFileError(f"{init_path}: is a msgpack file; {family.name} fills a checkpoint directory (-i DIR) "
                             f"or builds one from config.json (no tt-train that reads msgpack has {family.display})")
    if output_format == "flatbuffer":
        raise InputFileError(f"{init_path}: is a msgpack file; --format flatbuffer fills a checkpoint directory "
                             "(-i DIR) or builds one from config.json (--no-init)")
    size = os.path.getsize(init_path) if os.path.isfile(init_path) else 0
    with Progress(size, "reading init file", quiet) as progress:
        return TtFile(init_path, progress.advance, assume_float32=True)


def _add_master_weights(family, tt, ckpt, plan, meta_style):
    """Targets for a training state's full-precision master weights (float32 copies of the weights
    that training updates), filled from the checkpoint like the weights themselves."""
    masters = tt.weights()
    if not tt.weights_note:
        return
    for key, target in plan_conversion(family, tt, ckpt, meta_style, params=masters).targets.items():
        if key not in plan.targets:
            target.float32 = True
            plan.targets[key] = target


def _state_notices(family, tt, plan, prefix, build):
    notices = []
    if isinstance(tt, (BuiltFile, BuiltDir)):
        steps = "AdamW/steps" if isinstance(tt, BuiltDir) else "adamw/steps"
        layout = (f" (zero AdamW moments, {steps} 0, scheduler {build['scheduler']} at learning rate "
                  f"{build['learning_rate']:g})" if build["layout"] == "training" else " (model only, as -s dumps it)")
        fc = next(t for t in plan.targets.values() if t.param.name.endswith("/fc/weight"))
        notices.append(f"no init file: building {plan.prefix} from config.json: layout {build['layout']}{layout}, "
                       f"vocabulary {fc.param.rows} rows (a multiple of {build['vocab_multiple']})")
    saved = family.training_save_notice(tt, plan.prefix) if tt.is_training_state() and not prefix else None
    return notices + ([saved] if saved else [])


def run_conversion(ckpt, options):
    """Convert (or plan, with options.dry_run) one checkpoint into the tt file or checkpoint directory
    at options.init, or, when it is None, into one built from the config (options.build, in
    options.format). The output has the input's format; a training state's full-precision master
    weights are filled too. options.meta_style is decided (True or False) by then.

    A training save keeps its optimizer and scheduler entries; unless keep_optimizer_state, the
    moments are zeroed and the step counters set to 0, since they belonged to the old weights.
    options.prefix moves the model's keys under another prefix."""
    started = time.perf_counter()
    family, init_path, output_path = options.family, options.init, options.output
    prefix, build, meta_style = options.prefix, options.build, options.meta_style
    tt = _open_source(family, init_path, ckpt, build, options.quiet, options.format)
    plan = plan_conversion(family, tt, ckpt, meta_style)
    _add_master_weights(family, tt, ckpt, plan, meta_style)
    report = Report(plan, output_path)
    report.tensors = len(plan.targets)
    report.values = sum(t.n_values for t in plan.targets.values())
    report.value_bytes = value_bytes(tt)
    if options.dry_run:
        return report
    inputs = ([init_path] if init_path else []) + sorted({t.path for t in ckpt.tensors.values()})
    check_output(tt, output_path, inputs)
    for notice in plan.notices + _state_notices(family, tt, plan, prefix, build):
        log.info(notice)
    with conversion_output(tt, output_path, inputs) as writer, \
            Progress(report.values * report.value_bytes, "converting", options.quiet) as progress:
        report.nonfinite, reset = write_converted(plan, tt, ckpt, writer, progress, not options.keep_optimizer_state,
                                                  prefix)
    if tt.is_training_state() and init_path is not None:
        report.state = ("optimizer and scheduler state kept as it was" if options.keep_optimizer_state else
                        f"optimizer and scheduler state reset ({reset['moments']} moment tensors zeroed, "
                        f"{reset['counters']} step counters set to 0)")
    if prefix and prefix != plan.prefix:
        report.state = ", ".join(filter(None, [report.state, f"model moved from {plan.prefix} to {prefix}"]))
    report.bytes_written = output_size(output_path)
    report.seconds = time.perf_counter() - started
    if plan.untouched:
        log.info("left unchanged (no checkpoint source): %s", ", ".join(plan.untouched))
    if plan.unused:
        log.warning("checkpoint tensors not used: %s", ", ".join(plan.unused))
    if report.nonfinite:
        log.warning(
            "NaN or Inf values copied as they are in: %s",
            ", ".join(f"{k} ({n})" for k, n in report.nonfinite.items()),
        )
    return report


def run_ttml_conversion(ckpt, options):
    """Convert (or plan, with options.dry_run) one checkpoint into a ttml checkpoint at options.output,
    built from its config (tt.ttml_out.build_ttml with options.dtype, layout, tp, ep, learning_rate,
    max_sequence_length and allow_lossy): for a family whose only tt-train format is ttml's."""
    from .tt.ttml_out import build_ttml, ttml_output, value_bytes as ttml_value_bytes

    started = time.perf_counter()
    family = options.family
    built = build_ttml(family, ckpt, options.dtype, options.layout, options.tp, options.ep, options.learning_rate,
                       options.max_sequence_length, options.allow_lossy)
    plan = plan_conversion(family, built, ckpt, shape=built.shape)
    report = Report(plan, options.output, tensors=len(plan.targets),
                    values=sum(t.n_values for t in plan.targets.values()), value_bytes=ttml_value_bytes(built))
    if options.dry_run:
        return report
    inputs = sorted({t.path for t in ckpt.tensors.values()})
    for notice in plan.notices:
        log.info(notice)
    with ttml_output(built, options.output, inputs) as writer, \
            Progress(report.values * report.value_bytes, "converting", options.quiet) as progress:
        report.nonfinite, _ = write_converted(plan, built, ckpt, writer, progress)
    if built.is_training_state():
        report.state = f"AdamW state: zero moments, steps 0, learning rate {options.learning_rate:g}"
    report.bytes_written = output_size(options.output)
    report.seconds = time.perf_counter() - started
    if plan.unused:
        log.warning("checkpoint tensors not used: %s", ", ".join(plan.unused))
    if report.nonfinite:
        log.warning("NaN or Inf values copied as they are in: %s",
                    ", ".join(f"{k} ({n})" for k, n in report.nonfinite.items()))
    return report


def open_checkpoint(hf_model, revision=None):
    """A Checkpoint for a local directory or a Hugging Face hub id."""
    return Checkpoint(resolve_model(hf_model, revision))
