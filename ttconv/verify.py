"""`ttconv check`: run the model a tt-train file holds next to the Hugging Face model it came from.

Both run on the same token ids: tt-train's computation on the tt file (models.TtModel)
and transformers' on the checkpoint (models.HfModel). Their mean next-token losses must
agree to TOLERANCE (relative) and their top-1 predictions everywhere. For a family with
--meta_style (Llama), the checkpoint's own numbers also tell its q/k layout (see
decide_meta_style); the others (tt-train's Qwen3 loader always permutes) are compared with the
checkpoint as it is.
"""
import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import families
from .errors import MappingError, TtconvError
from .hf.checkpoint import Checkpoint
from .hf.hub import resolve_model
from .hf.tokenizer import sample_ids
from .progress import Progress
from .tt.formats import open_tt, weights_in_bfloat16
from .tt.lora import lora_setup, merged_reader, refuse_lora_options
from .tt.ttml import TtmlFile

log = logging.getLogger("ttconv")

TOLERANCE = 1e-4
# Below this relative gap between the two q/k readings the layout is not told apart (random weights
# differ by about 1e-5 relative; trained models by several percent even on text unlike their own).
LAYOUT_MARGIN = 0.01


@dataclass
class CheckResult:
    """The numbers of a check; ok when the losses agree to TOLERANCE and every top-1 prediction agrees."""

    tt_loss: float
    hf_loss: float
    max_abs_logit_diff: float
    top1_agreement: float
    tokens: int
    ok: bool
    reason: str = ""
    layout: Optional["LayoutDecision"] = None
    hf_bfloat16: bool = False

    def as_dict(self):
        result = {"tt_loss": self.tt_loss, "hf_loss": self.hf_loss, "max_abs_logit_diff": self.max_abs_logit_diff,
                  "top1_agreement": self.top1_agreement, "tokens": self.tokens, "ok": self.ok,
                  "hf_weights_rounded_to_bfloat16": self.hf_bfloat16}
        if self.layout is not None:
            result["qk_layout"] = {"as_stored_loss": self.layout.hf, "meta_interleaved_loss": self.layout.meta,
                                   "meta_style": self.layout.meta_style if self.layout.decided else None}
        return result


@dataclass
class LayoutDecision:
    """Losses of the checkpoint with its q/k rows read as they are ("hf") and as Meta-interleaved ("meta")."""

    hf: float
    meta: float

    @property
    def decided(self):
        return abs(self.hf - self.meta) > LAYOUT_MARGIN * min(self.hf, self.meta)

    @property
    def meta_style(self):
        return self.meta < self.hf

    def describe(self):
        verdict = ("Meta-interleaved: convert with --meta_style" if self.meta_style
                   else "Hugging Face layout: convert without --meta_style") if self.decided else "too close to call"
        return (f"q/k rows read as they are: loss {self.hf:.4f} nats; read as Meta-interleaved: "
                f"{self.meta:.4f} nats -> {verdict}")


def read_text(path):
    """The UTF-8 text of a --text file (None for None)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TtconvError(f"{path}: cannot read the text ({getattr(exc, 'strerror', None) or exc})") from None


def _shape_and_epsilon(ckpt, family):
    return family.model_shape(ckpt), family.norm_epsilon(ckpt.config)


def _streamed(tt_model, hf_model, tt_states, hf_states, ids, vocab_size):
    """LogitStats of the tt states (None without a tt model) and of each Hugging Face state, and the
    largest |tt logit - hf logit| per Hugging Face state, the head read a vocabulary chunk at a time."""
    from .models import LogitStats, head_chunks

    tt_stats = LogitStats(ids) if tt_model is not None else None
    hf_stats = [LogitStats(ids) for _ in hf_states]
    diffs = [0.0] * len(hf_states)
    for first, last in head_chunks(vocab_size, hf_states[0].shape[1]):
        hf_head = hf_model.head_rows(first, last)
        hf_logits = [state @ hf_head.T for state in hf_states]
        del hf_head
        for stats, logits in zip(hf_stats, hf_logits):
            stats.add(first, logits)
        if tt_model is not None:
            tt_logits = (tt_states @ tt_model.head_rows(first, last).T).astype(np.float64)
            tt_stats.add(first, tt_logits)
            diffs = [max(d, float(np.max(np.abs(tt_logits - logits)))) for d, logits in zip(diffs, hf_logits)]
    return tt_stats, hf_stats, diffs


def decide_meta_style(family, ckpt, text=None, tokens=128, quiet=True):
    """LayoutDecision for a checkpoint of a family with --meta_style from its loss on the text (the
    built-in sample when None)."""
    from .models import HfModel

    shape, eps = _shape_and_epsilon(ckpt, family)
    ids = np.array(sample_ids(ckpt.directory, text, tokens, shape.max_sequence_length, log.info))
    model = HfModel(ckpt, family, shape, eps)
    with Progress(shape.num_blocks, "deciding q/k layout", quiet, unit="layer") as progress:
        states = model.final_states(ids, progress, adjacent_pairs=(False, True))
    _, (as_is, meta), _ = _streamed(None, model, None, states, ids, shape.vocab_size)
    return LayoutDecision(as_is.loss(), meta.loss())


def _compare(tt_stats, hf_stats, diff, ids, layout):
    tt_loss, hf_loss = tt_stats.loss(), hf_stats.loss()
    top1 = float(np.mean(tt_stats.argmax == hf_stats.argmax))
    relative = abs(tt_loss - hf_loss) / max(abs(hf_loss), 1e-12)
    problems = []
    if relative > TOLERANCE:
        problems.append(f"tt loss {tt_loss:.4f} vs Hugging Face {hf_loss:.4f} nats "
                        f"(relative difference {relative:.2g} > {TOLERANCE:g})")
    if top1 < 1.0:
        problems.append(f"top-1 predictions agree on {top1:.1%} of {len(ids)} positions")
    return CheckResult(tt_loss, hf_loss, diff, top1, len(ids), not problems, "; ".join(problems), layout)


def check(options):
    """Run the tt-train file's model and the checkpoint's on the same ids (options: a CheckOptions);
    returns a CheckResult.

    options.text_path: a UTF-8 text file (the built-in English sample when None); options.tokens: how
    many of its tokens (capped at the context). For a family with --meta_style the result also
    holds the losses of the checkpoint's q/k layouts. options.tp: the tensor-parallel degree a ttml
    checkpoint was gathered from. A LoRA checkpoint is run with its adapters merged (scale
    lora_alpha / r, or / sqrt(r) with rslora): compare it with the merged model.
    """
    from .models import HfModel, TtModel

    family, tt_path, tokens = options.family, options.tt_path, options.tokens
    if tokens < 2:
        raise TtconvError(f"--tokens {tokens}: at least 2 tokens are needed to predict a next token")
    text = read_text(options.text_path)
    if not os.path.exists(tt_path):
        raise TtconvError(f"{tt_path}: no such file or directory")
    ckpt = Checkpoint(resolve_model(options.hf_model, options.revision))
    try:
        shape, eps = _shape_and_epsilon(ckpt, family)
        tt = open_tt(tt_path, families.ttml_models(), tp=options.tp, base=lambda: family.model_tensors(ckpt))
        adapters, lora_alpha, rslora = lora_setup(tt, options.lora_alpha, options.rslora)
        if adapters:
            tt = merged_reader(tt, adapters, lora_alpha, rslora)
        else:
            refuse_lora_options(tt_path, False, lora_alpha, rslora)
        tt_model = TtModel(tt, family, shape, eps, families.ALL)
        # A bfloat16 file is compared with the checkpoint rounded the same way: what is checked is
        # the mapping, not the rounding (which moves the loss far more than the tolerance).
        bfloat16 = weights_in_bfloat16(tt, tt_model.params)
        ids = np.array(sample_ids(ckpt.directory, text, tokens, tt_model.context, log.info))
        if int(ids.max()) >= shape.vocab_size:
            raise MappingError(f"the tokenizer gives id {int(ids.max())}, beyond the vocabulary of {shape.vocab_size}")
        variants = family.qk_layouts()
        hf_model = HfModel(ckpt, family, shape, eps, bfloat16)
        with Progress(shape.num_blocks * 2, "checking layers", options.quiet, unit="layer") as progress:
            tt_states = tt_model.final_states(ids, progress)
            hf_states = hf_model.final_states(ids, progress, adjacent_pairs=variants)
        tt_stats, hf_stats, diffs = _streamed(tt_model, hf_model, tt_states, hf_states, ids, shape.vocab_size)
    finally:
        ckpt.close()
    if len(variants) == 1:
        result = _compare(tt_stats, hf_stats[0], diffs[0], ids, None)
    else:
        layout = LayoutDecision(hf_stats[0].loss(), hf_stats[1].loss())
        # A checkpoint whose own numbers say its q/k rows are Meta-interleaved is compared as such:
        # that is the model a correct (--meta_style) conversion holds.
        reference = 1 if layout.decided and layout.meta_style else 0
        result = _compare(tt_stats, hf_stats[reference], diffs[reference], ids, layout)
    result.hf_bfloat16 = bfloat16
    if not result.ok and isinstance(getattr(tt, "reader", tt), TtmlFile) and tt.fused and tt.tp == 1:
        result.reason += ("; if the file was saved from N-way tensor parallelism (its fused rows rank-interleaved), "
                          "try --tp N")
    return result
