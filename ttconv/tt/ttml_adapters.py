"""tt-train's own LoRA adapter files: the `lora_step_N.safetensors` its LoRA recipes save.

tt-train's Llama LoRA recipe (examples/lora_llama/train_lora_llama.py) saves every trainable
parameter of its LoraModel: the adapters only, under their full ttml names
(`LoraModel/model/...<linear>/lora_A` [1, 1, r, in] and `lora_B` [1, 1, out, r]), float32,
with neither alpha nor rank recorded, never under tensor parallelism. The file holds no weight, so
the reader is given the model's tensors (canonical name under the root, rows, cols: the family's
tt_tensors for the original checkpoint's config) to stand for them: they carry shapes, no data,
and tell how a fused linear's lora_B rows split into its parts. Everything else reads as a ttml
checkpoint (tt.ttml) whose weights are not in the file.
"""
import os
import re

import numpy as np

from ..errors import TtconvError, TtFileError
from ..hf.checkpoint import read_safetensors_header
from . import ttml_names
from .ttdir import DirParameter
from .ttml import TensorRecord, TtmlFile
from .unpickler import Array, Blob

STEP = re.compile(r"lora_step_(\d+)\.safetensors")
STORED = {"F32": np.dtype("<f4")}  # what the recipe writes (to_numpy(FLOAT32))


def is_adapter_file(path):
    """True when path is a safetensors file whose tensors are all ttml LoRA adapters (lora_A/lora_B)."""
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    try:
        names = list(read_safetensors_header(path))
    except TtconvError:  # not a safetensors header after all: the other readers say what it is
        return False
    return bool(names) and all(name.endswith(ttml_names.LORA_SUFFIXES) for name in names)


class _NotStored:
    """A weight an adapter file stands for but does not hold: its shape, no data."""

    def __init__(self, key, rows, cols):
        self.key = key
        self.dims = (rows, cols)
        self.rows, self.cols = rows, cols


class TtmlAdapterFile(TtmlFile):
    """An adapter-only safetensors file of tt-train's, read as a LoRA-wrapped ttml model whose weights
    are the model's tensors (base: [(canonical name under the root, rows, cols)]) without data. With
    base None only its records are listed (inspect): it has no parameters."""

    kind = "tt-train LoRA adapter file"
    adapters_only = True

    def __init__(self, path, models, base):
        self.path = os.fspath(path)
        self.models = models
        self.tp = 1
        self.weights_note = None
        self.header, self.groups, self.optimizer_scalars = {}, ["model"], {}
        step = STEP.fullmatch(os.path.basename(self.path))
        self.step = int(step.group(1)) if step else None
        self.size = os.path.getsize(self.path)
        self.records = []
        for index, (name, info) in enumerate(read_safetensors_header(self.path).items(), 1):
            if info.dtype not in STORED or len(info.shape) != 4:
                raise TtFileError(f"{self.path}: {name} is {info.dtype} {list(info.shape)}; tt-train's adapter files "
                                  "hold 4-D float32 adapters")
            array = Array(tuple(info.shape), STORED[info.dtype], Blob(info.begin, info.end - info.begin))
            self.records.append(TensorRecord("model", (), name, None, array, index))
        self.root, self.family, _ = ttml_names.model_root(self.path, [r.name for r in self.records], models)
        if base is None:
            self.fused_linears, self._model, self._masters = [], {}, {}
            return
        if not any(name.startswith(self.family.block_0) for name, _, _ in base):
            raise TtFileError(f"{self.path}: holds the adapters of a {self.family.display} model ({self.root}/); "
                              f"use 'ttconv to-hf {self.family.name}' with the model it was trained on")
        self._base = {name: (rows, cols) for name, rows, cols in base}
        self._build_parameters()
        for name, (rows, cols) in self._base.items():
            key = f"{self.root}/{name}"
            self._model.setdefault(key, DirParameter(key, _NotStored(key, rows, cols)))

    def _part_sizes(self, name, rows, fused, model_by_name):
        """A fused linear's parts split as the model's own tensors do (q_linear's rows, then k and v
        halving kv_linear's, ...)."""
        if fused == "":
            return {"all": rows}
        sizes = {}
        for canonical, parts in ttml_names.translate(self.path, self.family, name)[1]:
            held = self._base.get(canonical[len(self.root) + 1:])
            if held is None:
                raise TtFileError(f"{self.path}: {name} adapts a linear the original model does not have "
                                  f"({canonical})")
            sizes.update({part: held[0] // len(parts) for part in parts})
        return {part: sizes[part] for part in ttml_names.FUSIONS[fused]}

    def read_values(self, data):
        _refuse_weights(self.path, data)
        return super().read_values(data)

    def row_source(self, param, scratch):
        _refuse_weights(self.path, param.data)
        return super().row_source(param, scratch)


def _refuse_weights(path, data):
    if isinstance(data, _NotStored):
        raise TtFileError(f"{path}: holds only LoRA adapters, not the weight {data.key}: export it as a PEFT "
                          "adapter folder (the default of to-hf) and apply that to the original model")
