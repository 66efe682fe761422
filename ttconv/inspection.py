"""`ttconv inspect` and the --dry-run plan printout."""
import json
import os

from .ttfile import TtFile, array_header

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


def describe(path):
    """Parameters and totals of a tt-train file, as a JSON-ready dict."""
    tt = TtFile(path)
    rows = []
    for name, param in tt.parameters().items():
        data_type = _scalar(tt, f"{name}/value/data_type")
        rows.append({
            "name": name,
            "shape": list(param.dims),
            "elements": param.data.n_elements,
            "data_type": DATA_TYPES.get(data_type, data_type),
            "layout": LAYOUTS.get(_scalar(tt, f"{name}/value/layout"), _scalar(tt, f"{name}/value/layout")),
            "variant": param.data.variant,
            "encoding": _encoding(param.data),
            "requires_grads": _scalar(tt, f"{name}/requires_grads"),
            "has_grads": _scalar(tt, f"{name}/has_grads"),
        })
    counted = {f"{r['name']}{suffix}" for r in rows
               for suffix in ("/value/data", "/value/shape", "/value/data_type", "/value/layout",
                              "/value/storage_type", "/requires_grads", "/has_grads")}
    return {
        "file": os.fspath(path),
        "bytes": tt.size,
        "entries": len(tt.entries),
        "parameters": rows,
        "other_entries": [e.key for e in tt.entries if e.key not in counted],
        "total_parameters": len(rows),
        "total_elements": sum(r["elements"] for r in rows),
    }


def _flag(value):
    return {True: "yes", False: "no", None: "-"}.get(value, str(value))


def inspect_file(path, as_json=False):
    """Print the parameters of a tt-train file (table or JSON); returns the exit status."""
    info = describe(path)
    if as_json:
        print(json.dumps(info, indent=2))
        return 0
    width = max([len(r["name"]) for r in info["parameters"]] + [4])
    print(f"{'name':<{width}}  {'shape':<22} {'elements':>12}  {'data_type':<9} {'variant':>7}  "
          f"{'encoding':<8} {'grad':<4} {'has_grad'}")
    for r in info["parameters"]:
        shape = "x".join(str(d) for d in r["shape"])
        print(f"{r['name']:<{width}}  {shape:<22} {r['elements']:>12,}  {str(r['data_type']):<9} "
              f"{r['variant']:>7}  {r['encoding']:<8} {_flag(r['requires_grads']):<4} {_flag(r['has_grads'])}")
    print(f"{info['total_parameters']} parameters, {info['total_elements']:,} values, "
          f"{info['entries']} entries, {info['bytes']:,} bytes")
    if info["other_entries"]:
        print(f"other entries: {', '.join(info['other_entries'])}")
    return 0


def print_plan(report):
    """Print a dry-run plan: tt key <- sources, untouched keys, unused checkpoint tensors."""
    plan = report.plan
    print(f"{plan.family} conversion plan (prefix {plan.prefix}): {report.tensors} tensors, "
          f"{report.values:,} values, about {report.values * 5:,} bytes of weights; nothing written")
    for key, target in plan.targets.items():
        print(f"  {key} [{target.param.rows}, {target.param.cols}] <- {target.describe()}")
    for notice in plan.notices:
        print(f"notice: {notice}")
    print(f"left unchanged (no checkpoint source): {', '.join(plan.untouched) or 'none'}")
    print(f"checkpoint tensors not used: {', '.join(plan.unused) or 'none'}")
