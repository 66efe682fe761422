"""`ttconv to-hf` for a LoRA checkpoint: a PEFT adapter folder, or the adapters merged.

A LoRA checkpoint of tt-train holds its adapters in tt-train's row order: q/k rows
interleaved for RoPE, a fused linear (kv, qkv, gate|up) with one lora_A and its parts' rows
stacked in lora_B, the C++ side's matrices transposed. The adapter folder PEFT loads
(`adapter_config.json`, `adapter_model.safetensors`) has one adapter per Hugging Face
projection: each part's lora_B rows, un-permuted, with the shared lora_A (exact: B_k A x and
B_v A x are the rows of B A x). Values keep the file's precision.
"""
import json
import logging

import numpy as np

from . import bf16
from .errors import MappingError
from .hf.safetensors_out import OutTensor, header_bytes
from .mapping import rope_order
from .tt.formats import weights_in_bfloat16
from .tt.lora import matrices

log = logging.getLogger("ttconv")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
def adapter_tensors(family, tt, adapters, plan):
    """[(PEFT tensor name, float32 values)] and {module: rank}: one adapter per Hugging Face projection.
    A projection whose lora_B rows are all zero (a fused linear's part that was not adapted, e.g. the
    k of a kv linear when only v_proj was) adds nothing and is left out, unless every one is."""
    targets = {t.param.name: t for t in plan.targets.values()}
    out, ranks, zero = [], {}, []
    for name, adapter in adapters.items():
        target = targets.get(name)
        if target is None:
            raise MappingError(f"{tt.path}: {name} has a LoRA adapter but is not a weight ttconv maps")
        a, b = matrices(tt, adapter)
        row = 0
        for piece in target.pieces:
            rows = b[row:row + piece.rows]
            if piece.transform == "rope":
                rows = rows[rope_order(0, piece.rows, piece.rows // piece.heads)]
            row += piece.rows
            module = family.peft_module(piece.tensor.name)
            if not np.any(rows):
                zero.append(module)
            out.append((f"base_model.model.{module}.lora_A.weight", a))
            out.append((f"base_model.model.{module}.lora_B.weight", rows))
            ranks[module] = adapter.rank
    if len(zero) < len(ranks):
        skipped = {f"base_model.model.{module}." for module in zero}
        out = [(name, values) for name, values in out if name[:name.rindex("lora_")] not in skipped]
        ranks = {module: rank for module, rank in ranks.items() if module not in zero}
    return out, ranks


def target_modules(adapted, modules):
    """PEFT target_modules naming exactly the adapted modules among all of the model's: a module
    name (q_proj) where it covers just those, else parent.name (mlp.c_proj), else full paths."""
    targets = set()
    for module in adapted:
        parts = module.split(".")
        for depth in (1, 2, len(parts)):
            suffix = ".".join(parts[-depth:])
            covered = {m for m in modules if m == suffix or m.endswith("." + suffix)}
            if covered <= set(adapted):
                targets.add(suffix)
                break
    return sorted(targets)


def adapter_config(family, ranks, alpha, rslora, base_model, modules):
    """adapter_config.json (bytes) as PEFT writes it for a LoRA adapter."""
    counts = {}
    for rank in ranks.values():
        counts[rank] = counts.get(rank, 0) + 1
    r = max(counts, key=lambda k: (counts[k], -k))
    config = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": base_model, "bias": "none",
        # PEFT's own value for Conv1D layers [in, out] (it sets it so, with a warning, if given false)
        "fan_in_fan_out": family.conv1d, "inference_mode": True, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "lora_alpha": alpha, "lora_dropout": 0.0,
        "modules_to_save": None, "peft_type": "LORA", "r": r,
        "rank_pattern": {module: rank for module, rank in sorted(ranks.items()) if rank != r},
        "revision": None, "target_modules": target_modules(ranks, modules),
        "task_type": "CAUSAL_LM", "use_rslora": bool(rslora),
    }
    return (json.dumps(config, indent=2) + "\n").encode("utf-8")


OUTPUT = {"f32": ("F32", lambda values: values.astype(np.float32), "float32"),
          "bf16": ("BF16", bf16.round_to_bits, "bfloat16"),
          "f16": ("F16", lambda values: values.astype(np.float16), "float16")}


def write_adapter(directory, family, tt, adapters, plan, alpha, rslora, base_model, weights, dtype="auto"):
    """Write adapter_config.json and adapter_model.safetensors into directory (an
    output.DirectoryOutput) for a family's model (a Family); weights: the names of the model's checkpoint tensors; dtype "auto"
    (the file's own precision), "f32", "bf16" or "f16" (round to nearest even). Returns (tensors,
    values, bytes, dtype name)."""
    tensors, ranks = adapter_tensors(family, tt, adapters, plan)
    modules = {family.peft_module(name) for name in weights if name.endswith(".weight")}
    caveat = family.peft_caveat(sorted(ranks), modules)
    if caveat:
        log.warning(caveat)
    if dtype == "auto":
        dtype = "bf16" if all(weights_in_bfloat16(tt, {"a": a.a, "b": a.b}) for a in adapters.values()) else "f32"
    dtype, encode, dtype_name = OUTPUT[dtype]
    described = [OutTensor(name, dtype, values.shape) for name, values in tensors]
    with directory.file(ADAPTER_WEIGHTS) as out:
        out.write(header_bytes(described))
        for _, values in tensors:
            out.write(np.ascontiguousarray(encode(values)).tobytes())
    with directory.file(ADAPTER_CONFIG) as out:
        out.write(adapter_config(family, ranks, alpha, rslora, base_model, modules))
    values = sum(int(np.prod(t.shape)) for t in described)
    return len(described), values, sum(t.nbytes for t in described), dtype_name
