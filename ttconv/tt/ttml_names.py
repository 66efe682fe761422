"""tt-train Python-side (ttml) parameter names -> the names ttconv's mapping tables use.

Each table line: a ttml name under the model's root (its class name), how its rows are fused
and which canonical names (the C++ side's, as in checkpoint directories) take which parts.
"q", "k", "v", "gate", "up" are parts of a fused linear, in the order its rows hold them; a
canonical name given several parts stacks them ([K; V] for kv_linear). Fusions: "qkv" rows
[Q | K | V] (Q as many rows as the attention output projection has columns, K and V halves of
the rest), "kv" rows [K | V], "gate_up" rows [gate | up]. Under N-way tensor parallelism each
fused tensor is gathered rank-interleaved ([Q0 K0 V0 | Q1 K1 V1 | ...]), so a part is every
rank's slice of it in turn. "stacked": an expert-parallel record (D, 1, rows, cols) whose slice r holds
expert r * E_local + j, j the record's own index ({j}) and E_local how many such records its layer
has; its canonical name's {e} is that expert. The schemes of a model are told apart by the names present. The tables
are each family's (ttconv.families: Family.ttml_table); the reader is given them as {root: Family}.
"""
import re

from ..errors import TtFileError

FUSIONS = {"": ("all",), "qkv": ("q", "k", "v"), "kv": ("k", "v"), "gate_up": ("gate", "up"), "stacked": ("all",)}

LORA_WRAPPER = "LoraModel/model/"
LORA_SUFFIXES = ("/lora_A", "/lora_B")
EMBEDDINGS = ("tok_emb/weight", "fc/weight")  # a tied embedding is saved under either


def compile_table(table):
    """A ttml table's lines as (pattern, fused, [(canonical name, parts)])."""
    lines = []
    for name, fused, targets in table:
        pattern = re.compile(re.escape(name).replace(re.escape("{i}"), r"(?P<i>\d+)")
                             .replace(re.escape("{e}"), r"(?P<e>\d+)").replace(re.escape("{j}"), r"(?P<j>\d+)"))
        parts = []
        for target in targets.split(";"):
            canonical, _, picked = target.strip().partition(" = ")
            parts.append((canonical, tuple(picked.split()) or FUSIONS[fused]))
        for _, picked in parts:
            unknown = set(picked) - set(FUSIONS[fused])
            if unknown:
                raise AssertionError(f"{name}: parts {unknown} are not parts of a {fused or 'plain'} tensor")
        lines.append((pattern, fused, parts))
    return lines


def _translates(family, name):
    rest = name[len(family.ttml_root) + 1:]
    return any(pattern.fullmatch(rest) for pattern, _, _ in family.ttml_lines())


def base_name(name):
    """The weight an adapter tensor belongs to (…/lora_A -> …/weight); other names as they are."""
    for suffix in LORA_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)] + "/weight"
    return name


def model_root(path, names, models):
    """(root, family, wrapper) of a ttml model from its parameter names, models: {root class name:
    Family}. wrapper is the prefix a LoRA-wrapped model's names carry ("LoraModel/model/", then the
    model's own names, with or without its class name) and is taken off by local_name; TtFileError
    naming what is not one."""
    wrapper = ""
    if names and all(name.startswith(LORA_WRAPPER) for name in names):
        wrapper = LORA_WRAPPER
        names = [name[len(wrapper):] for name in names]
        heads = {name.split("/", 1)[0] for name in names}
        if len(heads) > 1 or not heads & set(models):  # the model's own names without its class name
            fits = [root for root, family in models.items()
                    if all(_translates(family, f"{root}/{base_name(n)}") for n in names)]
            if len(fits) != 1:
                raise TtFileError(f"{path}: a LoRA-wrapped model whose names fit {' and '.join(fits) or 'no model'} "
                                  f"ttconv knows ({', '.join(models)})")
            return fits[0], models[fits[0]], wrapper
    roots = sorted({name.split("/", 1)[0] for name in names})
    if len(roots) != 1 or roots[0] not in models:
        known = ", ".join(models)
        raise TtFileError(f"{path}: model parameters under {', '.join(roots) or 'nothing'}; ttconv reads ttml "
                          f"models under {known}{' (or LoRA-wrapped: ' + LORA_WRAPPER + '...)' if not wrapper else ''}")
    return roots[0], models[roots[0]], wrapper + roots[0] + "/"


def local_name(root, wrapper, name):
    """A record's name as root/... (the LoRA wrapper taken off)."""
    return f"{root}/{name[len(wrapper):]}"


def translate(path, family, name):
    """(fused, [(canonical name under the root, parts)]) of a ttml parameter name of a family's model;
    TtFileError naming a name no table line knows."""
    root = family.ttml_root
    rest = name[len(root) + 1:]
    for pattern, fused, parts in family.ttml_lines():
        match = pattern.fullmatch(rest)
        if match:
            found = match.groupdict()
            expert = "{e}" if fused == "stacked" else found.get("e")  # a stacked record's experts: the reader's
            return fused, [(f"{root}/{c.format(i=found.get('i'), e=expert)}", picked) for c, picked in parts]
    raise TtFileError(f"{path}: unknown {root} parameter {name!r} (not a tensor of tt-train's {root})")


def qkv_sizes(path, name, size, tensors, sibling, known, width):
    """{"q", "k", "v": rows (or channels)} of a fused q|k|v tensor of `size`: the `known` part ("q" or
    "v") as wide as width(record) of its sibling tensor, the other two equal; TtFileError when the
    sibling is missing or the sizes do not split so."""
    if sibling not in tensors:
        raise TtFileError(f"{path}: {name} is a fused q|k|v tensor but {sibling} is missing, which tells its "
                          f"{known} size")
    part = width(tensors[sibling])
    if part >= size or (size - part) % 2:
        raise TtFileError(f"{path}: {name} has {size} q|k|v rows, which do not split into the {part} {known} rows "
                          f"{sibling} tells and two equal parts")
    other = (size - part) // 2
    return {"q": part if known == "q" else other, "k": other, "v": part if known == "v" else other}
