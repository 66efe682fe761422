"""`ttconv inspect` and the --dry-run plan printout."""
import json
import os

import numpy as np

from . import families
from .tt.lora import find_adapters
from .tt.ttdir import PARAMETER_FLAGS, TENSOR_FIELDS, TtDir, is_checkpoint_dir
from .tt.ttfile import SCHEDULER_ROOT, TtFile, array_header, state_group
from .tt.ttml import TtmlFile, is_ttml_file, plain
from .tt.ttml_adapters import TtmlAdapterFile, is_adapter_file

# ttnn DataType values as tt-train writes them
DATA_TYPES = {0: "BFLOAT16", 1: "FLOAT32", 2: "UINT32", 3: "BFLOAT8_B", 4: "BFLOAT4_B", 5: "UINT8",
              6: "UINT16", 7: "INT32", 8: "INVALID"}
LAYOUTS = {0: "ROW_MAJOR", 1: "TILE"}


def _scalar(tt, key):
    entry = tt.by_key.get(key)
    return entry.scalar if entry is not None else None


def _encoding(entry):
    if not entry.n_elements:
        return "-"
    per_value = (entry.end - entry.value_start - len(array_header(entry.n_elements))) / entry.n_elements
    names = {1.0: "int", 5.0: "f32", 9.0: "f64"}
    return names.get(per_value, f"mixed ({per_value:.2f} B/value)")


TENSOR_SUFFIXES = ("/value/data", "/value/shape", "/value/data_type", "/value/layout", "/value/storage_type",
                   "/requires_grads", "/has_grads")
GROUPS = ("model", "optimizer", "scheduler")


def _row(tt, name, param):
    data_type = _scalar(tt, f"{name}/value/data_type")
    layout = _scalar(tt, f"{name}/value/layout")
    return {
        "name": name,
        "shape": list(param.dims),
        "elements": param.data.n_elements,
        "data_type": DATA_TYPES.get(data_type, data_type),
        "layout": LAYOUTS.get(layout, layout),
        "variant": param.data.variant,
        "encoding": _encoding(param.data),
        "requires_grads": _scalar(tt, f"{name}/requires_grads"),
        "has_grads": _scalar(tt, f"{name}/has_grads"),
    }


def _value(value):
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def _model_prefix(names):
    heads = sorted({n[: -len("/fc/weight")] for n in names if n.endswith("/fc/weight")})
    return heads[0] if len(heads) == 1 else None


def _family(names, prefix):
    """The name of the model family whose blocks lie under prefix (None when none or several do)."""
    family = families.owning(names, prefix)
    return family.name if family else None


def _kind(prefix, groups, scalars):
    if not groups["optimizer"] and not groups["scheduler"] and not scalars["optimizer"]:
        return f"model parameters under {prefix or '?'} (an init file, a -s dump or converted weights)"
    moments = sorted({row["name"].split("/")[1] for row in groups["optimizer"]})
    where = next(filter(None, (family.prefix_note(prefix) for family in families.ALL)), "")
    return (f"training state: model under {prefix or '?'}{where}; optimizer: {', '.join(moments) or 'no moments'}, "
            f"steps {scalars['optimizer'].get('adamw/steps', scalars['optimizer'].get('steps', '?'))}; scheduler: "
            f"{', '.join(f'{k[len(SCHEDULER_ROOT):]}={_value(v)}' for k, v in scalars['scheduler'].items()) or 'none'}")


def _lora(reader):
    """What a LoRA model's adapters are (None for a model without): ranks, adapted linears, targets
    and the adapters' parameter count."""
    adapters = find_adapters(reader.path, reader.weights())
    if not adapters:
        return None
    stored = {}  # the tensors as the file holds them (a fused linear's adapter once, not once per part)
    for adapter in adapters.values():
        for param in (adapter.a, adapter.b):
            record = getattr(param.data, "record", None)
            name = record.name if record is not None else param.name
            stored[name] = record.array.shape if record is not None else (param.rows, param.cols)
    return {"ranks": sorted({a.rank for a in adapters.values()}),
            "targets": sorted({"/".join(name.split("/")[-3:-1]) for name in stored}),
            "adapted_linears": len(stored) // 2,
            "adapter_parameters": sum(int(np.prod(shape)) for shape in stored.values())}


def describe(path):
    """Parameters and state of a tt-train file, checkpoint directory or ttml checkpoint, grouped
    (model, optimizer, scheduler), as a JSON-ready dict (with "lora" for a LoRA model)."""
    if is_checkpoint_dir(path):
        reader = TtDir(path)
        info = _describe_dir(reader)
    elif is_ttml_file(path):
        reader = TtmlFile(path, families.ttml_models())
        info = _describe_ttml(reader)
    elif is_adapter_file(path):
        reader = TtmlAdapterFile(path, families.ttml_models(), base=None)
        info = _describe_ttml(reader)
        info["lora"] = _adapter_file_lora(reader)
        return info
    else:
        reader = TtFile(path)
        info = _describe_msgpack(reader)
    info["lora"] = _lora(reader)
    return info


def _adapter_file_lora(reader):
    """What _lora says of a model, for a file of adapters alone (read from its records' names and shapes)."""
    a = [r for r in reader.records if r.name.endswith("/lora_A")]
    return {"ranks": sorted({r.array.shape[-2] for r in a}),
            "targets": sorted({"/".join(r.name.split("/")[-3:-1]) for r in a}),
            "adapted_linears": len(a),
            "adapter_parameters": sum(int(np.prod(r.array.shape)) for r in reader.records),
            "adapters_only": True}


def _describe_msgpack(tt):
    path = tt.path
    groups = {group: [] for group in GROUPS}
    for name, param in tt.parameters().items():
        groups[state_group(param.data.key)].append(_row(tt, name, param))
    in_tensors = {row["name"] + suffix for rows in groups.values() for row in rows for suffix in TENSOR_SUFFIXES}
    scalars = {group: {} for group in GROUPS}
    others = []
    for entry in tt.entries:
        if entry.key in in_tensors:
            continue
        if entry.kind in ("int", "bool", "float"):
            scalars[state_group(entry.key)][entry.key] = entry.scalar
        else:
            others.append(entry.key)
    names = [row["name"] for row in groups["model"]]
    prefix = _model_prefix(names)
    everything = [row for rows in groups.values() for row in rows]
    return {
        "file": os.fspath(path),
        "format": "msgpack",
        "family": _family(names, prefix),
        "kind": _kind(prefix, groups, scalars),
        "training_state": tt.is_training_state(),
        "model_prefix": prefix,
        "bytes": tt.size,
        "entries": len(tt.entries),
        "parameters": groups["model"],
        "optimizer": groups["optimizer"],
        "optimizer_scalars": scalars["optimizer"],
        "scheduler": scalars["scheduler"],
        "other_entries": others + list(scalars["model"]),
        "total_parameters": len(everything),
        "total_elements": sum(r["elements"] for r in everything),
        "model_elements": sum(r["elements"] for r in groups["model"]),
    }


def _dir_row(ttdir, key, entry):
    header = entry.header
    name = key[: -len("/value")] if key.endswith("/value") else key
    declared = ttdir.values.get(key + "/layout")
    flags = {flag: ttdir.values.get(f"{name}/{flag}") for flag in PARAMETER_FLAGS}
    return {
        "name": name,
        "shape": list(header.logical_shape()),
        "elements": int(np.prod(header.logical_shape(), dtype=np.int64)),
        "data_type": header.dtype_name,
        "layout": header.layout,
        "declared_layout": LAYOUTS.get(declared.value, declared.value) if declared is not None else None,
        "devices": header.devices,
        "file": entry.filename,
        "requires_grads": flags["requires_grads"].value if flags["requires_grads"] is not None else None,
        "has_grads": flags["has_grads"].value if flags["has_grads"] is not None else None,
    }


def _dir_kind(prefix, roots, groups, scalars):
    if not groups["optimizer"] and not groups["scheduler"] and not scalars["optimizer"] and not scalars["scheduler"]:
        return f"model dump: parameters under {prefix or '?'} (what -s saves, or a converted model)"
    steps = {k.split("/", 1)[0]: v for k, v in scalars["optimizer"].items() if k.endswith("/steps")}
    parts = sorted({row["name"].split("/")[1] for row in groups["optimizer"]})
    scheduler = ", ".join(f"{k[len('scheduler/'):]}={_value(v)}" for k, v in scalars["scheduler"].items())
    return (f"training state: model under {prefix or '?'}; optimizer {', '.join(sorted(roots)) or '?'}: "
            f"{', '.join(parts) or 'no moments'}, steps {', '.join(str(v) for v in steps.values()) or '?'}; "
            f"scheduler: {scheduler or 'none'}")


def _describe_dir(ttdir):
    groups = {group: [] for group in GROUPS}
    in_tensors = set()
    for key, entry in sorted(ttdir.tensors.items()):
        row = _dir_row(ttdir, key, entry)
        groups[ttdir.group(key)].append(row)
        in_tensors.update([key] + [f"{key}/{f}" for f in TENSOR_FIELDS] + [f"{row['name']}/{f}" for f in PARAMETER_FLAGS])
    scalars = {group: {} for group in GROUPS}
    for key, value in sorted(ttdir.values.items()):
        if key not in in_tensors:
            plain = value.value.tolist() if isinstance(value.value, np.ndarray) else value.value
            scalars[ttdir.group(key)][key] = plain
    names = [row["name"] for row in groups["model"]]
    prefix = _model_prefix(names)
    everything = [row for rows in groups.values() for row in rows]
    return {
        "file": ttdir.directory,
        "format": "flatbuffer",
        "family": _family(names, prefix),
        "kind": _dir_kind(prefix, ttdir.optimizer_roots, groups, scalars),
        "training_state": ttdir.is_training_state(),
        "model_prefix": prefix,
        "bytes": sum(os.path.getsize(ttdir.tensor_path(e)) for e in ttdir.tensors.values())
        + os.path.getsize(ttdir.metadata_path),
        "entries": len(ttdir.values),
        "parameters": groups["model"],
        "optimizer": groups["optimizer"],
        "optimizer_scalars": scalars["optimizer"],
        "scheduler": scalars["scheduler"],
        "other_entries": list(scalars["model"]),
        "total_parameters": len(everything),
        "total_elements": sum(r["elements"] for r in everything),
        "model_elements": sum(r["elements"] for r in groups["model"]),
    }


def _ttml_row(record):
    array = record.array
    name = record.name if record.group == "model" else record.label[len("optimizer/"):]
    return {"name": name, "shape": list(array.shape), "elements": int(np.prod(array.shape, dtype=np.int64)),
            "data_type": array.dtype_name.upper(),
            "layout": record.meta.get("layout") if isinstance(record.meta, dict) else None,
            "record": record.index}


def _describe_ttml(tt):
    path = tt.path
    rows = {group: [_ttml_row(r) for r in tt.records if r.group == group] for group in ("model", "optimizer")}
    optimizer = sorted({r.path[-1] for r in tt.records if r.group == "optimizer" and r.path})
    steps = tt.optimizer_scalars.get("steps", "?")
    kind = (f"{tt.kind}: {tt.family.display} model under {tt.root}/ (step {tt.step if tt.step is not None else '?'})"
            + (f"; optimizer: {', '.join(optimizer) or 'no tensors'}, steps {steps}" if tt.is_training_state() else ""))
    everything = rows["model"] + rows["optimizer"]
    return {
        "file": os.fspath(path),
        "format": "ttml",
        "family": tt.family.name,
        "kind": kind,
        "training_state": tt.is_training_state(),
        "model_prefix": tt.root,
        "step": plain(tt.step),
        "model_config": plain(tt.model_config()),
        "header": plain({k: v for k, v in tt.header.items() if k != "model_config"}),
        "fused_tensors": tt.fused_linears,
        "model_summary": tt.family.ttml_summary(tt),
        "bytes": tt.size,
        "entries": len(tt.records),
        "parameters": rows["model"],
        "optimizer": rows["optimizer"],
        "optimizer_scalars": tt.optimizer_scalars,
        "scheduler": {},
        "other_entries": [],
        "total_parameters": len(everything),
        "total_elements": sum(r["elements"] for r in everything),
        "model_elements": sum(r["elements"] for r in rows["model"]),
    }


def _flag(value):
    return {True: "yes", False: "no", None: "-"}.get(value, str(value))


def _columns(info, width):
    """(header line, row formatter) for the format's table."""
    if info["format"] == "ttml":
        header = f"{'name':<{width}}  {'shape':<22} {'elements':>12}  {'data_type':<9} {'layout':<9} {'record':>6}"
        return header, lambda r, shape: (f"{r['name']:<{width}}  {shape:<22} {r['elements']:>12,}  "
                                         f"{str(r['data_type']):<9} {str(r['layout'] or '-'):<9} {r['record']:>6}")
    if info["format"] == "flatbuffer":
        header = (f"{'name':<{width}}  {'shape':<22} {'elements':>12}  {'data_type':<9} {'layout':<9} "
                  f"{'devices':>7}  {'grad':<4} {'has_grad':<8} file")
        return header, lambda r, shape: (
            f"{r['name']:<{width}}  {shape:<22} {r['elements']:>12,}  {str(r['data_type']):<9} {r['layout']:<9} "
            f"{r['devices']:>7}  {_flag(r['requires_grads']):<4} {_flag(r['has_grads']):<8} {r['file']}")
    header = (f"{'name':<{width}}  {'shape':<22} {'elements':>12}  {'data_type':<9} {'variant':>7}  "
              f"{'encoding':<8} {'grad':<4} {'has_grad'}")
    return header, lambda r, shape: (
        f"{r['name']:<{width}}  {shape:<22} {r['elements']:>12,}  {str(r['data_type']):<9} "
        f"{r['variant']:>7}  {r['encoding']:<8} {_flag(r['requires_grads']):<4} {_flag(r['has_grads'])}")


def _table(rows, line):
    for r in rows:
        print(line(r, "x".join(str(d) for d in r["shape"])))


def inspect_file(path, as_json=False):
    """Print the kind and the grouped parameters of a tt-train file or checkpoint directory (table or
    JSON); returns the exit status."""
    info = describe(path)
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    width = max([len(r["name"]) for r in info["parameters"] + info["optimizer"]] + [4])
    print(f"kind: {info['kind']}")
    family = info["family"]
    print(f"family: {families.get(family).display} (ttconv {family})" if family else "family: not recognised")
    lora = info["lora"]
    if lora:
        what = ("; to-hf writes a PEFT adapter (--hf_model, the model it was trained on, and --lora-alpha: the file "
                "records neither)" if lora.get("adapters_only") else
                "; to-hf writes a PEFT adapter (--lora-alpha), or the merged model with --merge-lora")
        print(f"LoRA model: rank {', '.join(map(str, lora['ranks']))}, {lora['adapted_linears']} adapted linears "
              f"({', '.join(lora['targets'])}), {lora['adapter_parameters']:,} adapter parameters{what}")
    if info["format"] == "ttml":
        config = info["model_config"] or {}
        print("model_config: " + (", ".join(f"{k}={_value(v)}" for k, v in config.items()) or "none in the header"))
        if info["model_summary"]:
            print(info["model_summary"])
        if info["fused_tensors"]:
            print(f"fused tensors: {', '.join(info['fused_tensors'])} (rank-interleaved if saved from tensor "
                  "parallelism: give --tp N to to-hf and check)")
    header, line = _columns(info, width)
    print(f"\nmodel ({len(info['parameters'])} tensors, {info['model_elements']:,} values)")
    print(header)
    _table(info["parameters"], line)
    if info["training_state"]:
        print(f"\noptimizer ({len(info['optimizer'])} tensors)"
              + "".join(f"; {k} = {_value(v)}" for k, v in info["optimizer_scalars"].items()))
        if info["optimizer"]:
            print(header)
            _table(info["optimizer"], line)
        if info["format"] != "ttml":
            print("\nscheduler" + ("".join(f"\n  {k} = {_value(v)}" for k, v in info["scheduler"].items()) or ": none"))
    if info["other_entries"]:
        print(f"\nother entries: {', '.join(info['other_entries'])}")
    print(f"\n{info['total_parameters']} parameters, {info['total_elements']:,} values, "
          f"{info['entries']} entries, {info['bytes']:,} bytes")
    return 0


def print_plan(report):
    """Print a dry-run plan: tt key <- sources, untouched keys, unused checkpoint tensors."""
    plan = report.plan
    print(f"{plan.family} conversion plan (prefix {plan.prefix}): {report.tensors} tensors, "
          f"{report.values:,} values, about {report.values * report.value_bytes:,} bytes of weights; nothing written")
    for key, target in plan.targets.items():
        print(f"  {key} [{target.param.rows}, {target.param.cols}] <- {target.describe()}")
    for notice in plan.notices:
        print(f"notice: {notice}")
    print(f"left unchanged (no checkpoint source): {', '.join(plan.untouched) or 'none'}")
    print(f"checkpoint tensors not used: {', '.join(plan.unused) or 'none'}")
