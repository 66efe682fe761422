"""tt-train's training state beside the model: AdamW moments and steps, scheduler state.

As tt-train V3 saves it every model_save_interval steps (../spec: tt-train-checkpoints):
`adamw/{first_moment,second_moment[,kahan_compensation]}/<param>/...` tensors keyed by
the bare parameter name, `adamw/steps` (size_t), and the scheduler's counters and last
learning rate. A fresh state is all zeros, with the configured learning rate.
"""
import re

from .ttfile import pack_float32, pack_int

# Where the model lies in each kind of file, by family: what training loads, what it saves.
LOAD_PREFIX = {"llama": "llama/llama", "gpt2": "transformer/transformer"}
SAVE_PREFIX = {"llama": "transformer/llama", "gpt2": "transformer/transformer"}

DEFAULT_LEARNING_RATE = 3e-4
MOMENTS = ("first_moment", "second_moment")
MOMENT_DATA = re.compile(r"^(adamw/(first_moment|second_moment|kahan_compensation)|theta)/.+/value/data$")
OPTIMIZER_STEPS = ("adamw/steps", 6)

# Scheduler entries by scheduler_type: (key, variant index, "step" or "lr").
SCHEDULERS = {
    "identity": (
        ("scheduler/m_last_step", 6, "step"),
        ("scheduler/m_last_lr", 3, "lr"),
    ),
    "warmup_linear": (
        ("scheduler/m_current_step_in_scheduler", 2, "step"),
        ("scheduler/m_last_lr", 3, "lr"),
        ("scheduler/m_current_scheduler_index", 6, "step"),
        ("scheduler/current_scheduler/m_last_step", 6, "step"),
        ("scheduler/current_scheduler/m_last_lr", 3, "lr"),
    ),
}
STEP_KEYS = frozenset([OPTIMIZER_STEPS[0], "steps"] + [key for entries in SCHEDULERS.values()
                                                        for key, _, kind in entries if kind == "step"])


def moment_prefix(moment, param_name):
    """Key prefix of one AdamW moment of a parameter (param_name: bare, e.g. llama/fc/weight)."""
    return f"adamw/{moment}/{param_name}"


def fresh_state(scheduler, learning_rate):
    """(key, variant index, packed value) of a fresh optimizer step counter and scheduler state."""
    entries = [(OPTIMIZER_STEPS[0], OPTIMIZER_STEPS[1], pack_int(0))]
    for key, variant, kind in SCHEDULERS[scheduler]:
        entries.append((key, variant, pack_float32(learning_rate) if kind == "lr" else pack_int(0)))
    return entries


def reset_kind(entry):
    """How starting afresh treats an entry of a training save: "zeros" (a moment tensor's data),
    "zero" (a step counter) or None (kept byte for byte)."""
    if entry.kind == "array" and MOMENT_DATA.match(entry.key):
        return "zeros"
    if entry.kind == "int" and entry.key in STEP_KEYS:
        return "zero"
    return None
