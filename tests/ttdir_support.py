"""Checkpoint directories for the tests, written apart from ttconv's code: the tt-train layout
(tt-flatbuffer-format.md) built with the flatbuffers runtime's Builder, tensor data tilized
with loops over tiles and faces, bfloat16 rounded by ml_dtypes, and helpers that run the real
ttnn library (tests/ttnn_tensor_tool.cpp) and flatc on what was written."""
import json
import os
import subprocess

import ml_dtypes
import numpy as np
from flatbuffers import Builder

TYPE_IDS = {"BoolValue": 1, "CharValue": 2, "IntValue": 3, "FloatValue": 4, "DoubleValue": 5, "UInt32Value": 6,
            "SizeTValue": 7, "BFloat16Value": 8, "StringValue": 9, "VectorChar": 10, "VectorInt": 11,
            "VectorFloat": 12, "VectorDouble": 13, "VectorUInt8": 14, "VectorUInt32": 15, "VectorBFloat16": 16,
            "VectorString": 17}
SCALAR_SLOTS = {"BoolValue": "PrependBoolSlot", "CharValue": "PrependInt8Slot", "IntValue": "PrependInt32Slot",
                "FloatValue": "PrependFloat32Slot", "DoubleValue": "PrependFloat64Slot",
                "UInt32Value": "PrependUint32Slot", "SizeTValue": "PrependUint64Slot",
                "BFloat16Value": "PrependUint16Slot"}
VECTOR_DTYPES = {"VectorChar": "<i1", "VectorInt": "<i4", "VectorFloat": "<f4", "VectorDouble": "<f8",
                 "VectorUInt8": "u1", "VectorUInt32": "<u4", "VectorBFloat16": "<u2"}
DTYPES = {"bf16": 0, "f32": 1, "u32": 2, "i32": 7}
WORDS = {"bf16": "<u2", "f32": "<u4", "u32": "<u4", "i32": "<i4"}


def bf16(values):
    """float32 values rounded to bfloat16 (nearest even), as float32."""
    return np.asarray(values, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def _offsets_vector(builder, offsets):
    builder.StartVector(4, len(offsets), 4)
    for offset in offsets[::-1]:
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _uints(builder, values):
    return builder.CreateNumpyVector(np.array(values, dtype="<u4"))


def _wrap(builder, vector):
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    return builder.EndObject()


def metadata_bytes(pairs):
    """A TTMLData flatbuffer from (key, type name, value) triples (a type id number stands for itself)."""
    builder = Builder(1024)
    built = []
    for key, type_name, value in pairs:
        key_offset = builder.CreateString(key)
        if type_name == "StringValue":
            inner = builder.CreateString(value)
        elif type_name == "VectorString":
            inner = _offsets_vector(builder, [builder.CreateString(v) for v in value])
        elif type_name in VECTOR_DTYPES:
            inner = builder.CreateNumpyVector(np.asarray(value, dtype=VECTOR_DTYPES[type_name]))
        else:
            inner = None
        builder.StartObject(1)
        if inner is not None:
            builder.PrependUOffsetTRelativeSlot(0, inner, 0)
        elif type_name in SCALAR_SLOTS:
            getattr(builder, SCALAR_SLOTS[type_name])(0, value, 0)
        table = builder.EndObject()
        builder.StartObject(3)
        builder.PrependUOffsetTRelativeSlot(2, table, 0)
        builder.PrependUint8Slot(1, TYPE_IDS.get(type_name, type_name), 0)
        builder.PrependUOffsetTRelativeSlot(0, key_offset, 0)
        built.append(builder.EndObject())
    pairs_vector = _offsets_vector(builder, built)
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, pairs_vector, 0)
    builder.Finish(builder.EndObject())
    return bytes(builder.Output())


def tile_loops(matrix):
    """Tiles of 32x32 in row-major tile order, each as four 16x16 faces (TL, TR, BL, BR), rows within."""
    rows, cols = matrix.shape
    out = []
    for tile_row in range(0, rows, 32):
        for tile_col in range(0, cols, 32):
            for face_row in (0, 16):
                for face_col in (0, 16):
                    top, left = tile_row + face_row, tile_col + face_col
                    out.append(matrix[top:top + 16, left:left + 16].reshape(-1))
    return np.concatenate(out)


def _padded(values, dims, alignment):
    padded = list(dims)
    for back, align in enumerate(reversed(alignment), start=1):
        if back <= len(padded):
            padded[-back] = -(-padded[-back] // align) * align
    out = np.zeros(padded, dtype=values.dtype)
    out[tuple(slice(0, d) for d in dims)] = values.reshape(dims)
    return out.reshape(-1, padded[-1])


def tensor_payload(values, dtype="bf16", layout="tile", alignment=None):
    """(stored bytes, alignment) of one shard holding values (any shape)."""
    values = np.asarray(values, np.float32)
    dims = values.shape
    if dtype == "bf16":
        words = bf16(values).view(np.uint32) >> 16
    elif dtype == "f32":
        words = values.view(np.uint32)
    else:
        words = values
    words = words.astype(WORDS[dtype])
    alignment = alignment or ([32, 32] if layout == "tile" else [1])
    matrix = _padded(words, dims, alignment)
    data = tile_loops(matrix) if layout == "tile" else matrix.reshape(-1)
    return data.tobytes(), alignment


def tensorbin_bytes(values, dtype="bf16", layout="tile", alignment=None, shards=None, placements=None,
                    distribution=None, mesh=None, identifier=False, version=None, topology=True, data_align=64,
                    shape=None):
    """A .tensorbin. shards: list of (mesh coordinate, per-shard values) (default: one shard of values
    at [0, 0]); placements: (type, tensor_dim) per distribution axis (default: Replicate)."""
    shards = shards or [((0, 0), values)]
    payloads = [tensor_payload(v, dtype, layout, alignment) for _, v in shards]
    alignment = payloads[0][1]
    shape = shape or list(np.asarray(shards[0][1]).shape)
    builder = Builder(512)
    data, offsets = b"", []
    for raw, _ in payloads:
        offsets.append((len(data), len(raw)))
        data += raw
    shard_tables = []
    for (coordinate, _), (offset, size) in zip(shards, offsets):
        coord = _wrap(builder, _uints(builder, coordinate))
        builder.Prep(8, 16)
        builder.PrependUint64(size)
        builder.PrependUint64(offset)
        storage = builder.Offset()
        builder.StartObject(3)
        builder.PrependUOffsetTRelativeSlot(2, coord, 0)
        builder.PrependUOffsetTRelativeSlot(1, storage, 0)
        builder.PrependUint8Slot(0, 1, 0)
        shard_tables.append(builder.EndObject())
    shards_vector = _offsets_vector(builder, shard_tables)
    topology_table = None
    if topology:
        placements = placements or [(0, -1)]
        placement_tables = []
        for kind, dim in placements:
            builder.StartObject(2)
            builder.PrependInt32Slot(1, dim, 0)
            builder.PrependUint8Slot(0, kind, 0)
            placement_tables.append(builder.EndObject())
        placement_vector = _offsets_vector(builder, placement_tables)
        coords = _offsets_vector(builder, [_wrap(builder, _uints(builder, c)) for c, _ in shards])
        dist = _wrap(builder, _uints(builder, distribution or [len(shards)]))
        builder.StartObject(3)
        builder.PrependUOffsetTRelativeSlot(2, coords, 0)
        builder.PrependUOffsetTRelativeSlot(1, placement_vector, 0)
        builder.PrependUOffsetTRelativeSlot(0, dist, 0)
        topology_table = builder.EndObject()
    mesh_table = _wrap(builder, _uints(builder, mesh or [1, len(shards)]))
    shape_vector = _uints(builder, shape)
    align_vector = _uints(builder, alignment)
    builder.StartObject(0)
    page = builder.EndObject()
    if layout == "tile":
        builder.StartObject(3)
        builder.PrependUint32Slot(1, 32, 0)
        builder.PrependUint32Slot(0, 32, 0)
        tile = builder.EndObject()
        builder.StartObject(1)
        builder.PrependUOffsetTRelativeSlot(0, tile, 0)
        page = builder.EndObject()
    builder.StartObject(0)
    memory = builder.EndObject()
    builder.StartObject(5)
    builder.PrependUOffsetTRelativeSlot(4, align_vector, 0)
    builder.PrependUOffsetTRelativeSlot(3, memory, 0)
    builder.PrependUOffsetTRelativeSlot(2, page, 0)
    builder.PrependUint8Slot(1, 2 if layout == "tile" else 1, 0)
    builder.PrependUint8Slot(0, DTYPES[dtype], 255)
    tensor_layout = builder.EndObject()
    builder.StartObject(2)
    builder.PrependUOffsetTRelativeSlot(1, tensor_layout, 0)
    builder.PrependUOffsetTRelativeSlot(0, shape_vector, 0)
    spec = builder.EndObject()
    builder.StartObject(5)
    if version is not None:
        builder.PrependUint32Slot(4, version, 0xFFFFFFFF)
    if topology_table is not None:
        builder.PrependUOffsetTRelativeSlot(3, topology_table, 0)
    builder.PrependUOffsetTRelativeSlot(2, shards_vector, 0)
    builder.PrependUOffsetTRelativeSlot(1, mesh_table, 0)
    builder.PrependUOffsetTRelativeSlot(0, spec, 0)
    root = builder.EndObject()
    if identifier:
        builder.Finish(root, file_identifier=b"TTNB")
    else:
        builder.Finish(root)
    header = bytes(builder.Output())
    header += bytes(-(8 + len(header)) % data_align)
    return len(header).to_bytes(8, "little") + header + data


def tensor_pairs(key, filename, values, layout=1, storage=1, dtype=0):
    """The metadata pairs of one ttnn tensor at key, as tt-train's write_ttnn_tensor puts them."""
    dims = np.asarray(np.shape(values), dtype="<u4").tobytes()
    return [(key, "StringValue", filename), (key + "/shape", "VectorUInt8", np.frombuffer(dims, np.uint8)),
            (key + "/data_type", "IntValue", dtype), (key + "/layout", "IntValue", layout),
            (key + "/storage_type", "IntValue", storage)]


def sanitize(key):
    return key.replace("/", "_") + ".tensorbin"


def write_dir(path, tensors, scalars=(), dtype="bf16", layout="tile", parameters=True, tensor_options=None):
    """A checkpoint directory: tensors {parameter name: values [1, 1, r, c]} each written as the parameter
    N (N/value + flags) or, with parameters=False, as a plain tensor N; scalars: (key, type, value).
    tensor_options: {name: extra tensorbin_bytes keyword arguments}."""
    os.makedirs(path, exist_ok=True)
    pairs = list(scalars)
    for name, values in tensors.items():
        key = name + "/value" if parameters else name
        options = dict(dtype=dtype, layout=layout)
        options.update((tensor_options or {}).get(name, {}))
        filename = sanitize(key)
        with open(os.path.join(path, filename), "wb") as handle:
            handle.write(tensorbin_bytes(values, **options))
        pairs += tensor_pairs(key, filename, values, dtype=DTYPES[options["dtype"]])
        if parameters:
            pairs += [(name + "/requires_grads", "BoolValue", True), (name + "/has_grads", "BoolValue", False)]
    with open(os.path.join(path, "metadata.flatbuffer"), "wb") as handle:
        handle.write(metadata_bytes(pairs))
    return path


def as_tt_tensors(named, prefix):
    """{prefix/name: values as [1, 1, rows, cols] float32} from {tt name: 2-D array}."""
    return {f"{prefix}/{name}": np.asarray(v, np.float32).reshape(1, 1, *np.asarray(v).reshape(-1, v.shape[-1]).shape)
            for name, v in named.items()}


def training_dir(path, model, model_name, optimizer="AdamW", dtype="bf16", steps=7, lr=3e-4, masters=None,
                 scheduler=True):
    """A training state as tt-train's save_training_state writes it: the model under model_name, the
    optimizer's state dict under its name (AdamW: exp_avg/exp_avg_sq BF16, steps SizeT, lr Float, amsgrad
    Bool; AdamWFullPrecision adds FP32 master_weights and FP32 moments; "old": first_moment/second_moment),
    and an identity scheduler. model: {parameter name under the root module: values}; masters: {same
    names: float32 values} for AdamWFullPrecision."""
    tensors = {f"{model_name}/{name}": v for name, v in model.items()}
    options = {}
    moments = ("first_moment", "second_moment") if optimizer == "old" else ("exp_avg", "exp_avg_sq")
    root = "AdamW" if optimizer == "old" else optimizer
    rng = np.random.default_rng(5)
    for moment in moments:
        for name, v in model.items():
            key = f"{root}/{moment}/{name}"
            tensors[key] = rng.standard_normal(np.shape(v)).astype(np.float32) * 1e-3
            if optimizer == "AdamWFullPrecision":
                options[key] = {"dtype": "f32"}
    if optimizer == "AdamWFullPrecision":
        for name, v in (masters or {}).items():
            tensors[f"{root}/master_weights/{name}"] = v
            options[f"{root}/master_weights/{name}"] = {"dtype": "f32"}
    scalars = [(f"{root}/steps", "SizeTValue", steps), (f"{root}/lr", "FloatValue", lr),
               (f"{root}/amsgrad", "BoolValue", False)]
    if scheduler:
        scalars += [("scheduler/m_last_step", "IntValue", steps), ("scheduler/m_last_lr", "FloatValue", lr),
                    ("scheduler/m_base_lr", "FloatValue", lr)]
    return write_dir(path, tensors, scalars, dtype=dtype, tensor_options=options)


# ---------------------------------------------------------------- the real ttnn library and flatc

class TtnnTool:
    """tests/ttnn_tensor_tool.cpp built against the ttnn 0.81.1 wheel's libraries."""

    def __init__(self, binary):
        self.binary = binary

    def read(self, path, tmp_path):
        """(dtype, layout, dims 4-D, values float32 flat) as ttnn loads the file."""
        values_path = os.path.join(tmp_path, "ttnn-values.f32")
        result = subprocess.run([self.binary, "read", str(path), values_path], capture_output=True, text=True)
        assert result.returncode == 0, f"ttnn could not load {path}: {result.stderr}"
        dtype, layout, _rank, *dims = (int(v) for v in result.stdout.split())
        return dtype, layout, dims, np.fromfile(values_path, np.float32)

    def rewrite(self, source, target, layout=None):
        """ttnn loads source and dumps it to target (after to_layout, when layout is given)."""
        argv = [self.binary, "rewrite", str(source), str(target)] + ([layout] if layout else [])
        result = subprocess.run(argv, capture_output=True, text=True)
        assert result.returncode == 0, f"ttnn could not rewrite {source}: {result.stderr}"

    def rewrite_dir(self, directory, layout=None):
        """Every .tensorbin of a directory replaced by ttnn's own dump of it."""
        for name in sorted(os.listdir(directory)):
            if name.endswith(".tensorbin"):
                path = os.path.join(directory, name)
                self.rewrite(path, path + ".ttnn", layout)
                os.replace(path + ".ttnn", path)


def flatc_json(flatc, schema, binary, tmp_path):
    """flatc's own reading of a flatbuffer (verified against the schema) as a dict."""
    out_dir = os.path.join(tmp_path, "flatc-json")
    os.makedirs(out_dir, exist_ok=True)
    result = subprocess.run([flatc, "--json", "--strict-json", "--raw-binary", "--defaults-json", "-o", out_dir,
                             schema, "--", str(binary)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    name = os.path.splitext(os.path.basename(str(binary)))[0] + ".json"
    with open(os.path.join(out_dir, name)) as handle:
        return json.load(handle)
