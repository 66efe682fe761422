"""tt-train checkpoint directories (flatbuffer era): `metadata.flatbuffer` + one `.tensorbin` per tensor.

The metadata is a flatbuffer `TTMLData` whose `pairs` map keys to typed values (the
union SerializableType); a tensor `T` is `T -> StringValue("<sanitized T>.tensorbin")`
with `T/shape`, `T/data_type`, `T/layout`, `T/storage_type` beside it, and a parameter
`N` is the tensor `N/value` with `N/requires_grads` and `N/has_grads`. `TtDir` reads
the metadata and the tensor headers it is asked about, and offers the interface the
drivers use on msgpack files (parameters, read_values, is_training_state).
"""
import math
import os
import struct
from dataclasses import dataclass

import flatbuffers
import numpy as np
from flatbuffers import number_types as N

from ..errors import TtFileError
from . import tensorbin
from .flatbuf import FlatbufferError, offsets_vector, root
from .rows import DecodedRows

METADATA_NAME = "metadata.flatbuffer"
MAX_METADATA = 1 << 28

# SerializableType union ids -> (type name, how its value table's field 0 is read)
VALUE_TYPES = {
    1: ("BoolValue", N.BoolFlags), 2: ("CharValue", N.Int8Flags), 3: ("IntValue", N.Int32Flags),
    4: ("FloatValue", N.Float32Flags), 5: ("DoubleValue", N.Float64Flags), 6: ("UInt32Value", N.Uint32Flags),
    7: ("SizeTValue", N.Uint64Flags), 8: ("BFloat16Value", N.Uint16Flags), 9: ("StringValue", "string"),
    10: ("VectorChar", np.int8), 11: ("VectorInt", np.int32), 12: ("VectorFloat", np.float32),
    13: ("VectorDouble", np.float64), 14: ("VectorUInt8", np.uint8), 15: ("VectorUInt32", np.uint32),
    16: ("VectorBFloat16", np.uint16), 17: ("VectorString", "strings"),
}

TENSOR_FIELDS = ("shape", "data_type", "layout", "storage_type")
PARAMETER_FLAGS = ("requires_grads", "has_grads")
SCHEDULER_ROOT = "scheduler"
# Second components that mark a top-level key as an optimizer's (AdamW, AdamWFullPrecision, SGD, ...).
OPTIMIZER_PARTS = ("steps", "lr", "amsgrad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "master_weights",
                   "first_moment", "second_moment", "kahan_compensation", "momentum", "theta")
MASTER_WEIGHTS = "master_weights"


@dataclass
class Value:
    """One metadata value: its union type name and the Python value (numpy array for vectors)."""

    type: str
    value: object


TYPE_IDS = {name: type_id for type_id, (name, _) in VALUE_TYPES.items()}
SCALAR_SLOTS = {"BoolValue": "PrependBoolSlot", "CharValue": "PrependInt8Slot", "IntValue": "PrependInt32Slot",
                "FloatValue": "PrependFloat32Slot", "DoubleValue": "PrependFloat64Slot",
                "UInt32Value": "PrependUint32Slot", "SizeTValue": "PrependUint64Slot",
                "BFloat16Value": "PrependUint16Slot"}


def _value_table(builder, value):
    _, reader = VALUE_TYPES[TYPE_IDS[value.type]]
    if reader == "string":
        inner = builder.CreateString(value.value)
    elif reader == "strings":
        inner = offsets_vector(builder, [builder.CreateString(text) for text in value.value])
    elif isinstance(reader, type) and issubclass(reader, np.generic):
        inner = builder.CreateNumpyVector(np.asarray(value.value, dtype=np.dtype(reader).newbyteorder("<")))
    else:
        inner = None
    builder.StartObject(1)
    if inner is None:
        getattr(builder, SCALAR_SLOTS[value.type])(0, value.value, 0)
    else:
        builder.PrependUOffsetTRelativeSlot(0, inner, 0)
    return builder.EndObject()


def metadata_bytes(values):
    """A metadata.flatbuffer (TTMLData) holding {key: Value} in the dict's order, every scalar written
    even where it equals the schema's default."""
    builder = flatbuffers.Builder(1 << 16)
    builder.ForceDefaults(True)
    pairs = []
    for key, value in values.items():
        key_offset = builder.CreateString(key)
        table = _value_table(builder, value)
        builder.StartObject(3)
        builder.PrependUOffsetTRelativeSlot(2, table, 0)
        builder.PrependUint8Slot(1, TYPE_IDS[value.type], 0)
        builder.PrependUOffsetTRelativeSlot(0, key_offset, 0)
        pairs.append(builder.EndObject())
    vector = offsets_vector(builder, pairs)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def tensor_file_name(key):
    """The file tt-train writes a tensor's data to: its key with every '/' and '\\' made '_', plus .tensorbin."""
    return key.replace("/", "_").replace("\\", "_") + tensorbin.SUFFIX


def shape_value(dims):
    """KEY/shape as tt-train writes it: the dims packed as little-endian uint32 in a VectorUInt8."""
    return Value("VectorUInt8", np.frombuffer(struct.pack(f"<{len(dims)}I", *dims), dtype=np.uint8))


def read_metadata(path):
    """{key: Value} of a metadata.flatbuffer, every offset checked; TtFileError otherwise."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_METADATA:
                raise TtFileError(f"{path}: {size:,} bytes, too large for tt-train metadata")
            buf = handle.read()
    except OSError as exc:
        raise TtFileError(f"{path}: cannot read: {exc.strerror}") from None
    if not buf:
        raise TtFileError(f"{path}: file is empty, expected tt-train metadata (a TTMLData flatbuffer)")
    try:
        return _pairs(path, buf)
    except FlatbufferError as exc:
        raise TtFileError(f"{path}: not tt-train metadata: {exc}") from None


def _pairs(path, buf):
    data = root(buf, "TTMLData")
    values = {}
    for number, pair in enumerate(data.tables(0, "KeyValuePair")):
        key = pair.string(0)
        if key is None:
            raise TtFileError(f"{path}: pair {number} has no key")
        type_id, table = pair.union(1, 2, f"value of {key!r}")
        if type_id not in VALUE_TYPES:
            hint = " (TensorValue, which tt-train never writes)" if type_id == 18 else ""
            raise TtFileError(f"{path}: {key!r} has unknown value type {type_id}{hint}")
        name, reader = VALUE_TYPES[type_id]
        if reader == "string":
            value = table.string(0)
        elif reader == "strings":
            value = table.strings(0, f"values of {key!r}")
        elif isinstance(reader, type) and issubclass(reader, np.generic):
            value = table.numbers(0, reader)
        else:
            value = table.scalar(0, reader)
        if key in values:
            raise TtFileError(f"{path}: key {key!r} appears twice")
        values[key] = Value(name, value)
    return values


def state_group(key, optimizer_roots):
    """Which part of a checkpoint directory a key belongs to: "model", "optimizer" or "scheduler"."""
    head = key.split("/", 1)[0]
    if head == SCHEDULER_ROOT:
        return "scheduler"
    if head in optimizer_roots:
        return "optimizer"
    return "model"


def locate(path):
    """(directory, metadata file) for a checkpoint directory or its metadata file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, METADATA_NAME)
        if not os.path.isfile(candidate):
            others = sorted(n for n in os.listdir(path) if n.endswith(".flatbuffer"))
            if not others:
                raise TtFileError(f"{path}: a directory without {METADATA_NAME}; not a tt-train checkpoint")
            candidate = os.path.join(path, others[0])
        return path, candidate
    return os.path.dirname(path) or ".", path


def is_checkpoint_dir(path):
    """True when path is a directory or a *.flatbuffer file (a tt-train checkpoint to read)."""
    return os.path.isdir(path) or os.fspath(path).endswith(".flatbuffer")


@dataclass
class DirItem:
    """One metadata entry, in the file's order: its key, value and, for a tensor, its DirEntry."""

    key: str
    value: Value
    tensor: object = None


class DirEntry:
    """A tensor of the directory: its key and (read on first use) its file's header; dims, when given,
    stand for a tensor that has no file yet."""

    def __init__(self, ttdir, key, filename, dims=None):
        self.key = key
        self.filename = filename
        self._ttdir = ttdir
        self._header = None
        self._dims = dims

    @property
    def dims(self):
        """The tensor's logical shape."""
        return self._dims if self._dims is not None else self.header.logical_shape()

    @property
    def header(self):
        if self._header is None:
            self._header = tensorbin.read_header(self._ttdir.tensor_path(self))
            self._ttdir.check_shape(self)
        return self._header


class DirParameter:
    """A parameter N of a checkpoint directory (its tensor N/value), or of a ttml checkpoint (a
    TtmlTensor): a name and data whose dims are the tensor's logical shape."""

    def __init__(self, name, data):
        self.name = name
        self.data = data

    @property
    def dims(self):
        return self.data.dims

    @property
    def rows(self):
        return math.prod(self.dims[:-1])

    @property
    def cols(self):
        return self.dims[-1]


class TtDir:
    """A tt-train checkpoint directory, read: metadata at once, tensor headers when asked, data by read_values."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.directory, self.metadata_path = locate(self.path)
        self.values = read_metadata(self.metadata_path)
        self.optimizer_roots = _optimizer_roots(self.values)
        self._real_directory = os.path.realpath(self.directory)
        self.tensors = {}
        for key, value in self.values.items():
            if value.type == "StringValue" and value.value.endswith(tensorbin.SUFFIX):
                self.tensors[key] = DirEntry(self, key, self._checked_name(key, value.value))
        self.weights_note = None

    @property
    def entries(self):
        """Every metadata entry as a DirItem, in the file's order."""
        return [DirItem(key, value, self.tensors.get(key)) for key, value in self.values.items()]

    def _checked_name(self, key, name):
        if (not name or "/" in name or "\\" in name or "\0" in name or name in (".", "..")
                or os.path.isabs(name)):
            raise TtFileError(f"{self.metadata_path}: {key!r} names tensor file {name!r}, which is not a plain "
                              "file name inside the checkpoint directory")
        return name

    def tensor_path(self, entry):
        """The tensor file of an entry, checked to be a regular file inside the directory."""
        path = os.path.join(self.directory, entry.filename)
        real = os.path.realpath(path)
        if os.path.dirname(real) != self._real_directory:
            raise TtFileError(f"{path}: tensor file of {entry.key!r} leads outside the checkpoint directory")
        if not os.path.isfile(real):
            what = "is missing" if not os.path.lexists(path) else "is not a regular file"
            raise TtFileError(f"{path}: tensor file of {entry.key!r} {what}")
        return real

    def check_shape(self, entry):
        """The metadata's KEY/shape (when present) must match the tensor file's logical shape."""
        shape = self.values.get(entry.key + "/shape")
        if shape is None:
            return
        raw = shape.value
        if shape.type != "VectorUInt8" or len(raw) % 4 or not len(raw):
            raise TtFileError(f"{self.metadata_path}: {entry.key}/shape is a {shape.type} of {len(raw)} "
                              "elements, expected VectorUInt8 holding uint32 dims")
        dims = struct.unpack(f"<{len(raw) // 4}I", bytes(raw))
        header = entry._header
        if dims not in (tuple(header.shape), header.logical_shape()):
            raise TtFileError(f"{self.metadata_path}: {entry.key}/shape is {list(dims)} but "
                              f"{entry.filename} holds {list(header.logical_shape())}")

    def group(self, key):
        return state_group(key, self.optimizer_roots)

    def parameters(self, group=None):
        """Parameters by name: every N whose N/value is a tensor (only one state_group's when group is given)."""
        return {key[:-len("/value")]: DirParameter(key[:-len("/value")], entry)
                for key, entry in self.tensors.items()
                if key.endswith("/value") and (group is None or self.group(key) == group)}

    def weights(self):
        """The model's parameters as training last updated them: a full-precision optimizer's master
        weights stand in for the model tensors they belong to (weights_note then says so)."""
        model = self.parameters("model")
        masters = {}
        for name, param in self.parameters("optimizer").items():
            part, _, bare = name.partition("/")[2].partition("/")
            if part == MASTER_WEIGHTS:
                masters[bare] = param
        used = 0
        for name in model:
            bare = name.partition("/")[2]
            if bare in masters:
                model[name] = DirParameter(name, masters[bare].data)
                used += 1
        if used:
            roots = sorted({k.split("/", 1)[0] for k in self.tensors if f"/{MASTER_WEIGHTS}/" in k})
            self.weights_note = (f"full-precision master weights of {', '.join(roots)} exported for {used} of "
                                 f"{len(model)} tensors (what training updates; the bf16 model copy is derived)")
        return model

    def is_training_state(self):
        """True when the directory holds optimizer or scheduler state beside the model."""
        return any(self.group(key) != "model" for key in self.values)

    def read_values(self, entry):
        """The tensor's values as a flat float32 array (bfloat16 widened exactly)."""
        return tensorbin.read_tensor(entry.header).reshape(-1)

    def row_source(self, param, scratch):
        """Row access (tt.rows) to a parameter's tensor: its stored words where the file allows, else
        its values decoded whole (a tensor sharded across devices)."""
        header = param.data.header
        if tensorbin.stored_rows(header):
            return tensorbin.row_source(header, scratch)
        return self.decoded_rows(param)

    def decoded_rows(self, param):
        """The parameter's values decoded whole to float32, as a row source."""
        return DecodedRows(self.read_values(param.data), param.cols)


def _optimizer_roots(values):
    roots = set()
    for key in values:
        head, _, rest = key.partition("/")
        if head != SCHEDULER_ROOT and rest.split("/", 1)[0] in OPTIMIZER_PARTS:
            roots.add(head)
    return roots
