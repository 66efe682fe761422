"""The family modules and their registry: each family's tables, the registry's lookups, and the rule
that nothing outside ttconv/families/ knows a family by its name."""
import ast
import inspect
import pathlib
import re

import pytest

from ttconv import families
from ttconv.errors import CheckpointError, TtconvError
from ttconv.families.base import Family

PACKAGE = pathlib.Path(families.__file__).resolve().parent.parent


def test_tables_follow_the_spec_names():
    llama = {tt for tt, _, _ in families.get("llama").table}
    assert {"tok_emb/weight", "fc/weight", "ln_fc/gamma", "llama_block_{i}/attention/q_linear/weight",
            "llama_block_{i}/mlp/w3/weight"} <= llama
    gpt2 = dict((tt, src) for tt, src, _ in families.get("gpt2").table)
    assert gpt2["gpt_block_{i}/mlp/fc2/weight"] == "h.{i}.mlp.c_proj.weight:T"
    assert gpt2["pos_emb/weight"] == "wpe.weight"


def test_the_registry_finds_each_family_by_name_and_refuses_others():
    assert [f.name for f in families.ALL] == list(families.NAMES) == ["llama", "qwen3", "gpt2", "qwen3.5",
                                                                             "deepseek"]
    for family in families.ALL:
        assert families.get(family.name) is family and families.get(family) is family
    assert families.get("qwen38") is families.get("qwen3.5")  # tt-train's name for it
    with pytest.raises(TtconvError, match="unknown model family 'mistral'; ttconv converts 'llama', 'qwen3', 'gpt2', "
                                          "'qwen3.5', 'deepseek'"):
        families.get("mistral")
    assert set(families.ttml_models()) == {"Llama", "Qwen3", "NanoGPT", "Qwen38Transformer", "DeepSeek"}


def test_every_family_implements_the_whole_interface():
    abstract = {name for name, member in vars(Family).items() if callable(member) and
                "raise NotImplementedError" in inspect.getsource(member)}
    assert {"read_shape", "hf_config", "tt_tensors", "tt_forward", "hf_forward"} <= abstract
    for family in families.ALL:
        missing = [name for name in abstract if getattr(type(family), name) is getattr(Family, name)]
        assert not missing, f"{family.name} lacks {missing}"
        assert family.name and family.display and family.block_0 and family.model_root and family.table


def test_the_first_block_names_tell_the_families_apart():
    names = ["m/fc/weight", "m/qwen3_block_0/mlp/w1/weight"]
    assert families.owning(names, "m") is families.get("qwen3")
    assert families.owning(names + ["m/llama_block_0/mlp/w1/weight"], "m") is None


class _Config:
    def __init__(self, config):
        self.config, self.directory = config, "ckpt"


@pytest.mark.parametrize("config, family, message", [
    ({"model_type": "gpt2"}, "llama", "is a 'gpt2' checkpoint, not Llama; use 'ttconv gpt2'"),
    ({"model_type": "mixtral"}, "gpt2", "is a 'mixtral' checkpoint, not GPT-2$"),
    ({"architectures": ["Qwen3ForCausalLM"]}, "llama", "is a 'qwen3' checkpoint, not Llama; use 'ttconv qwen3'"),
    ({}, "qwen3", "names no model_type; 'ttconv qwen3' converts Qwen3 checkpoints"),
])
def test_a_checkpoint_of_another_family_is_refused_naming_it(config, family, message):
    with pytest.raises(CheckpointError, match=message):
        families.check_model_type(families.get(family), _Config(config))


@pytest.mark.parametrize("config, family", [({"model_type": "mistral"}, "llama"), ({}, "llama"),
                                            ({"model_type": "qwen3"}, "qwen3"), ({}, "gpt2")])
def test_a_checkpoint_of_the_family_passes(config, family):
    families.check_model_type(families.get(family), _Config(config))


# What may name a family outside families/: the public API's function names, and Llama 3's RoPE scaling
# (a kind of scaling other families use too).
ALLOWED = {"convert_llama", "convert_gpt2", "llama3"}
NAMES = re.compile(r"llama|qwen|gpt-?2|nanogpt", re.I)


def _literals(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_family_name_is_a_literal_outside_the_family_modules():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "families" in path.relative_to(PACKAGE).parts:
            continue
        for line, text in _literals(path):
            text = re.sub(r"Llama 3\b", "llama3", text)  # the scaling's name in prose
            words = {m.group(0).lower() for m in re.finditer(r"\w+(?:-\w+)?", text) if NAMES.search(m.group(0))}
            if words - ALLOWED:
                found.append(f"{path.relative_to(PACKAGE)}:{line}: {text[:80]!r}")
    assert not found, "\n".join(found)


def test_a_family_without_ttml_checkpoints_refuses_to_write_one():
    with pytest.raises(TtconvError, match="ttconv writes Llama as msgpack or flatbuffer, not as ttml checkpoints"):
        families.get("llama").ttml_records(None, 32, None)
