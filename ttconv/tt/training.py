"""tt-train's training state beside the model: AdamW moments and steps, scheduler state.

As tt-train V3 saves it every model_save_interval steps (../spec: tt-train-checkpoints):
`adamw/{first_moment,second_moment[,kahan_compensation]}/<param>/...` tensors keyed by
the bare parameter name, `adamw/steps` (size_t), and the scheduler's counters and last
learning rate. A fresh state is all zeros, with the configured learning rate.
"""
import re

from .ttfile import pack_float32, pack_int

DEFAULT_LEARNING_RATE = 3e-4
DEFAULT_MAX_STEPS = 5000
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
    """Key prefix of one AdamW moment of a parameter (param_name: bare, <root>/<name>)."""
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


# Checkpoint directories (tt-train since late 2025): the model under the YAML's model_type, then the
# parameter names of its root module (Family.dir_model_prefix); the optimizer under its get_name(),
# the scheduler under "scheduler", with the key names and value types of tt-train's sources.
DIR_OPTIMIZER = "AdamW"
DIR_MOMENTS = ("exp_avg", "exp_avg_sq")
WARMUP_FRACTION = 0.1


def _linear_child(index, learning_rate, start, end, total):
    child = f"scheduler/scheduler_{index}/"
    return [(child + "m_last_step", "SizeTValue", 0), (child + "m_last_lr", "FloatValue", learning_rate),
            (child + "m_base_lr", "FloatValue", learning_rate), (child + "m_start_factor", "FloatValue", start),
            (child + "m_end_factor", "FloatValue", end), (child + "m_total_steps", "IntValue", total)]


def dir_fresh_state(scheduler, learning_rate, max_steps=DEFAULT_MAX_STEPS):
    """(key, value type, value) of a fresh AdamW and scheduler state, as tt-train saves them before its
    first step: AdamW's steps (size_t), lr (float), amsgrad (bool); identity: a LambdaScheduler;
    warmup_linear: a SequentialScheduler of LinearSchedulers 0 -> 1 over int(0.1 * max_steps) steps and
    1 -> 0.01 over the rest, each child under scheduler_{i}/."""
    state = [(f"{DIR_OPTIMIZER}/steps", "SizeTValue", 0), (f"{DIR_OPTIMIZER}/lr", "FloatValue", learning_rate),
             (f"{DIR_OPTIMIZER}/amsgrad", "BoolValue", False)]
    if scheduler == "identity":
        return state + [("scheduler/m_last_step", "SizeTValue", 0), ("scheduler/m_last_lr", "FloatValue", learning_rate),
                        ("scheduler/m_base_lr", "FloatValue", learning_rate)]
    warmup = int(max_steps * WARMUP_FRACTION)
    return state + [("scheduler/m_current_step_in_scheduler", "IntValue", 0),
                    ("scheduler/m_last_lr", "FloatValue", learning_rate),
                    ("scheduler/m_current_scheduler_index", "SizeTValue", 0)] + \
        _linear_child(0, learning_rate, 0.0, 1.0, warmup) + \
        _linear_child(1, learning_rate, 1.0, 0.01, max_steps - warmup)
