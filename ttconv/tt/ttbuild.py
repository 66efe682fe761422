"""tt-train files built from a model's config alone, without an init file dumped by tt-train.

Entry for entry as tt-train (V3) writes a model: per parameter the seven keys
`shape` (bin, rank-4 little-endian uint32), `data_type` (BFLOAT16), `layout` (TILE),
`storage_type` (DEVICE), `data`, `requires_grads` and `has_grads`. The model lies under
the prefix tt-train loads (the family's load_prefix: `llama/llama`, `transformer/transformer`). The "training"
layout adds what training mode loads too: zero AdamW moments for every parameter,
`adamw/steps` 0 and a fresh scheduler. The result is a BuiltFile, which the conversion
fills exactly like a TtFile read from disk.

Checkpoint directories are built the same way (BuiltDir, filled like a TtDir): the model under
`<model_type>/<root>` with each parameter's `value` (its tensor file), `value/shape`
(VectorUInt8), `value/data_type`, `value/layout`, `value/storage_type` (IntValue) and the
`requires_grads`, `has_grads` flags (BoolValue); the "training" layout adds AdamW's zero
`exp_avg`/`exp_avg_sq` and the fresh state of training.dir_fresh_state.
"""
import struct

from .training import (DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS, DIR_MOMENTS, DIR_OPTIMIZER, MOMENTS, dir_fresh_state,
                       fresh_state, moment_prefix)
from .ttdir import DirEntry, TtDir, Value, shape_value, tensor_file_name
from .ttfile import (DATA_SUFFIX, Entry, TtFile, array_header, map_header, pack_bin, pack_bool, pack_int,
                     pack_key, pair_prefix, write_int_zeros)

LAYOUTS = ("training", "model")
BFLOAT16, TILE, DEVICE = 0, 1, 1


def rope_model_ends(shape, vocab_rows):
    """The tensors of a RoPE decoder outside its blocks: embedding (untied only), fc, final norm."""
    e = shape.embedding_dim
    tensors = [] if shape.weight_tying else [("tok_emb/weight", vocab_rows, e)]
    return tensors + [("fc/weight", vocab_rows, e), ("ln_fc/gamma", 1, e)]


class BuiltFile(TtFile):
    """A tt-train file described entry by entry in memory; arrays are zeros until filled."""

    def __init__(self, path):
        self.path = path
        self.entries = []
        self.by_key = {}
        self.size = 0
        self.header_end = 0
        self._values = {}

    def _add(self, key, variant, kind, packed=None, **fields):
        entry = Entry(key, 0, 0, 0, variant, kind, **fields)
        self.entries.append(entry)
        self.by_key[key] = entry
        self._values[key] = packed

    def add_tensor(self, name, rows, cols, trainable):
        dims = struct.pack("<4I", 1, 1, rows, cols)
        self._add(f"{name}/value/shape", 12, "bin", pack_bin(dims), small_value=dims)
        for field, value in (("data_type", BFLOAT16), ("layout", TILE), ("storage_type", DEVICE)):
            self._add(f"{name}/value/{field}", 2, "int", pack_int(value), scalar=value)
        self._add(name + DATA_SUFFIX, 10, "array", n_elements=rows * cols, numeric=True)
        self._add(f"{name}/requires_grads", 0, "bool", pack_bool(trainable), scalar=trainable)
        self._add(f"{name}/has_grads", 0, "bool", pack_bool(False), scalar=False)

    def add_scalar(self, key, variant, packed):
        self._add(key, variant, "int" if variant != 3 else "float", packed)

    def packed_value(self, entry):
        """The msgpack bytes of a small entry's value, or None for an array (zeros until filled)."""
        return self._values[entry.key]

    def open_source(self):
        return BuiltSource(self)


class BuiltSource:
    """The bytes of a BuiltFile's entries, for TtWriter."""

    def __init__(self, built):
        self.tt = built

    def close(self):
        pass

    def write_header(self, write):
        write(map_header(len(self.tt.entries)))

    def write_key(self, entry, key, write):
        write(pack_key(key) + pair_prefix(entry.variant))

    def write_value(self, entry, write):
        packed = self.tt.packed_value(entry)
        if packed is not None:
            write(packed)
        else:
            write(array_header(entry.n_elements))
            write_int_zeros(entry.n_elements, write)


def build_file(family, ckpt, layout="training", scheduler="identity", learning_rate=DEFAULT_LEARNING_RATE,
               vocab_multiple=32):
    """A BuiltFile for the checkpoint's config (family: a Family): the model (zeros, to be filled) under
    the load prefix and, for the "training" layout, a fresh AdamW and scheduler state."""
    shape = family.model_shape(ckpt)
    vocab_rows = shape.tt_vocab(vocab_multiple)
    tensors = family.tt_tensors(shape, vocab_rows)
    prefix = family.load_prefix
    root = prefix.split("/")[-1]
    built = BuiltFile(f"{ckpt.directory}/config.json")
    for name, rows, cols in tensors:
        built.add_tensor(f"{prefix}/{name}", rows, cols, trainable=True)
    if layout == "training":
        for moment in MOMENTS:
            for name, rows, cols in tensors:
                built.add_tensor(moment_prefix(moment, f"{root}/{name}"), rows, cols, trainable=False)
        for key, variant, packed in fresh_state(scheduler, learning_rate):
            built.add_scalar(key, variant, packed)
    return built


class BuiltDir(TtDir):
    """A checkpoint directory described in memory; its tensors have no files and are zeros until filled."""

    def __init__(self, path):
        self.path = path
        self.directory = self.metadata_path = None
        self.values = {}
        self.tensors = {}
        self.optimizer_roots = set()
        self.weights_note = None

    def add_parameter(self, name, rows, cols, trainable):
        key = f"{name}/value"
        self.values[key] = Value("StringValue", tensor_file_name(key))
        self.values[f"{key}/shape"] = shape_value([1, 1, rows, cols])
        for field, value in (("data_type", BFLOAT16), ("layout", TILE), ("storage_type", DEVICE)):
            self.values[f"{key}/{field}"] = Value("IntValue", value)
        self.values[f"{name}/requires_grads"] = Value("BoolValue", trainable)
        self.values[f"{name}/has_grads"] = Value("BoolValue", False)
        self.tensors[key] = DirEntry(self, key, None, dims=(1, 1, rows, cols))

    def add_value(self, key, value_type, value):
        self.values[key] = Value(value_type, value)


def build_dir(family, ckpt, layout="training", scheduler="identity", learning_rate=DEFAULT_LEARNING_RATE,
              vocab_multiple=32, max_steps=DEFAULT_MAX_STEPS):
    """A BuiltDir for the checkpoint's config (family: a Family): the model under <model_type>/<root>
    and, for the "training" layout, AdamW's zero moments and a fresh optimizer and scheduler state."""
    shape = family.model_shape(ckpt)
    tensors = family.tt_tensors(shape, shape.tt_vocab(vocab_multiple))
    built = BuiltDir(f"{ckpt.directory}/config.json")
    for name, rows, cols in tensors:
        built.add_parameter(f"{family.dir_model_prefix}/{name}", rows, cols, trainable=True)
    if layout == "training":
        built.optimizer_roots.add(DIR_OPTIMIZER)
        for moment in DIR_MOMENTS:
            for name, rows, cols in tensors:
                built.add_parameter(f"{DIR_OPTIMIZER}/{moment}/{family.model_root}/{name}", rows, cols,
                                    trainable=False)
        for key, value_type, value in dir_fresh_state(scheduler, learning_rate, max_steps):
            built.add_value(key, value_type, value)
    return built
