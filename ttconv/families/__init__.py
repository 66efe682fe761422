"""The model families ttconv converts: one module each, and the registry the drivers ask.

Adding a family: write its module (a Family subclass and one instance of it, see base.py), add
that instance to ALL below, add its tests and its README section. Nothing else names it.
"""
from ..errors import CheckpointError, TtconvError
from .deepseek import DEEPSEEK
from .gpt2 import GPT2
from .llama import LLAMA
from .qwen3 import QWEN3
from .qwen3_5 import QWEN3_5

ALL = (LLAMA, QWEN3, GPT2, QWEN3_5, DEEPSEEK)  # in the order commands and help list them
NAMES = tuple(family.name for family in ALL)
_BY_NAME = {name: family for family in ALL for name in (family.name,) + family.aliases}


def get(name):
    """The Family a command or API call names (a Family is returned as it is); TtconvError for others."""
    if hasattr(name, "name") and name in ALL:
        return name
    family = _BY_NAME.get(name)
    if family is None:
        raise TtconvError(f"unknown model family {name!r}; ttconv converts {', '.join(map(repr, NAMES))}")
    return family


def ttml_models():
    """{ttml root class name: Family} for the ttml reader."""
    return {family.ttml_root: family for family in ALL if family.ttml_root}


def owning(names, prefix):
    """The family whose blocks lie under prefix among parameter names (None when none or several do)."""
    found = [family for family in ALL if prefix and any(n.startswith(f"{prefix}/{family.block_0}") for n in names)]
    return found[0] if len(found) == 1 else None


def check_model_type(family, ckpt):
    """CheckpointError when a checkpoint's config.json names a model_type of another family."""
    config = ckpt.config
    model_type = config.get("model_type")
    if model_type is None:
        model_type = next((f.model_types[0] for f in ALL for arch in config.get("architectures") or []
                           if str(arch).startswith(f.architecture_prefixes or ("\0",))), None)
    if model_type is None:
        if family.architecture_prefixes:
            raise CheckpointError(f"{ckpt.directory}/config.json names no model_type; 'ttconv {family.name}' converts "
                                  f"{family.display} checkpoints (model_type {family.model_types[0]!r})")
        return
    owner = next((f for f in ALL if model_type in f.model_types), None)
    expected = owner or next(f for f in ALL if f.reads_other_model_types)  # other model_types: Llama-shaped
    if expected is not family:
        raise CheckpointError(f"{ckpt.directory} is a {model_type!r} checkpoint, not {family.display}"
                              + (f"; use 'ttconv {owner.name}'" if owner else ""))
