"""ttnn `.tensorbin` files: one tensor, as `ttnn::dump_tensor_flatbuffer` writes it.

    [0, 8)             uint64 header_size
    [8, 8+header_size) flatbuffer `Tensor` (spec, mesh shape, shards, topology), zero-padded
    [8+header_size, )  data; each shard's offset is relative to its start

The header is read with every offset checked (flatbuf) before any data is touched;
the data of a shard is read straight into numpy, untilized (32x32 tiles of 16x16
faces; other tile shapes are refused), unpadded to the logical shape and, across
devices, read once when replicated or reassembled along the sharded dimensions.
"""
import functools
import math
import os
import struct
from dataclasses import dataclass, field

import numpy as np
import flatbuffers
from flatbuffers import number_types as N

from ..errors import TtFileError
from .flatbuf import FlatbufferError, offsets_vector, root
from .rows import FileRows

SUFFIX = ".tensorbin"
MAX_HEADER = 1 << 26
FILE_IDENTIFIER = b"TTNB"

# flatbuffer DataType -> (name, numpy dtype of the stored words); block-float types are not read
DATA_TYPES = {0: ("BFLOAT16", "<u2"), 1: ("FLOAT32", "<f4"), 2: ("UINT32", "<u4"), 3: ("BFLOAT8_B", None),
              4: ("BFLOAT4_B", None), 5: ("UINT8", "u1"), 6: ("UINT16", "<u2"), 7: ("INT32", "<i4")}
BFLOAT16, FLOAT32 = 0, 1
ROW_MAJOR_PAGE, TILE_PAGE = 1, 2
INLINE_FILE_STORAGE = 1
REPLICATE, SHARD = 0, 1
TILE, FACE = 32, 16

# Root `Tensor` fields and the fields of the tables below it (ttnn/core/tensor/flatbuffer/*.fbs).
T_SPEC, T_MESH, T_SHARDS, T_TOPOLOGY, T_VERSION = range(5)
SPEC_SHAPE, SPEC_LAYOUT = 0, 1
LAYOUT_DTYPE, LAYOUT_PAGE_TYPE, LAYOUT_PAGE, LAYOUT_MEMORY, LAYOUT_ALIGNMENT = range(5)
TILE_H, TILE_W, TILE_TRANSPOSE = range(3)
SHARD_BUFFER_TYPE, SHARD_BUFFER, SHARD_COORD = range(3)
TOPO_DISTRIBUTION, TOPO_PLACEMENTS, TOPO_COORDS = range(3)


@dataclass
class Shard:
    coordinate: tuple
    offset: int
    size: int


@dataclass
class TensorHeader:
    """What a .tensorbin header says, checked against the file's size."""

    path: str
    shape: tuple
    data_type: int
    layout: str
    tile: tuple
    alignment: tuple
    mesh_shape: tuple
    shards: list
    distribution: tuple = ()
    placements: list = field(default_factory=list)
    mesh_coords: list = field(default_factory=list)
    schema_version: int = 0
    identifier: bool = False
    data_start: int = 0
    file_size: int = 0

    @property
    def dtype_name(self):
        return DATA_TYPES.get(self.data_type, (f"DataType {self.data_type}",))[0]

    @property
    def devices(self):
        return len(self.shards)

    def padded_dims(self):
        """The shape with its trailing dims padded to the alignment (and, for TILE, to whole tiles)."""
        dims = list(self.shape) if self.shape else [1]
        align = list(self.alignment)
        for back in range(1, min(len(align), len(dims)) + 1):
            dims[-back] = _round_up(dims[-back], max(align[-back], 1))
        if self.layout == "TILE":
            if len(dims) == 1:
                dims.insert(0, 1)
            dims[-2] = _round_up(dims[-2], TILE)
            dims[-1] = _round_up(dims[-1], TILE)
        return dims

    def matrix(self):
        """(rows, cols) of one shard as stored: leading dims stacked vertically."""
        dims = self.padded_dims()
        return math.prod(dims[:-1]), dims[-1]

    def shard_bytes(self):
        rows, cols = self.matrix()
        return rows * cols * np.dtype(DATA_TYPES[self.data_type][1]).itemsize

    def logical_shape(self):
        """The whole tensor's shape once the shards are put together."""
        dims = list(self.shape)
        for (kind, dim), count in zip(self.placements, self.distribution):
            if kind == SHARD:
                dims[dim] *= count
        return tuple(dims)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _fail(path, message):
    raise TtFileError(f"{path}: {message}")


def read_header(path):
    """The checked header of a .tensorbin file; TtFileError names the file and the problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 8:
                _fail(path, f"{size} bytes, too short for a tensor file (an 8-byte header size comes first)")
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size > min(size - 8, MAX_HEADER):
                _fail(path, f"header_size {header_size} does not fit the {size}-byte file")
            buf = handle.read(header_size)
    except OSError as exc:
        _fail(path, f"cannot read: {exc.strerror}")
    try:
        header = _parse(path, buf)
    except FlatbufferError as exc:
        _fail(path, f"corrupt tensor header: {exc}")
    header.data_start, header.file_size = 8 + header_size, size
    _check_shards(header)
    return header


def _parse(path, buf):
    tensor = root(buf, "Tensor")
    spec = tensor.table(T_SPEC, "TensorSpec")
    if spec is None:
        _fail(path, "tensor header has no tensor_spec")
    shape = tuple(int(d) for d in spec.numbers(SPEC_SHAPE, np.uint32))
    layout = spec.table(SPEC_LAYOUT, "TensorLayout")
    if layout is None:
        _fail(path, "tensor spec has no tensor_layout")
    data_type = layout.scalar(LAYOUT_DTYPE, N.Uint8Flags)
    if DATA_TYPES.get(data_type, (None, None))[1] is None:
        name = DATA_TYPES.get(data_type, (f"unknown data type {data_type}",))[0]
        _fail(path, f"data type {name} is not supported (BFLOAT16, FLOAT32 and integer types are)")
    page_type, page = layout.union(LAYOUT_PAGE_TYPE, LAYOUT_PAGE, "page_config")
    tile = (0, 0)
    if page_type == TILE_PAGE:
        tile_table = page.table(0, "Tile")
        if tile_table is None:
            _fail(path, "TILE page config without a tile")
        tile = (tile_table.scalar(TILE_H, N.Uint32Flags), tile_table.scalar(TILE_W, N.Uint32Flags))
        if tile_table.scalar(TILE_TRANSPOSE, N.BoolFlags, False):
            _fail(path, "transposed tiles are not supported")
        if tile != (TILE, TILE):
            _fail(path, f"tile shape {list(tile)} is not supported (32x32 is)")
    elif page_type != ROW_MAJOR_PAGE:
        _fail(path, f"unknown page config type {page_type} (1 row-major, 2 tile)")
    alignment = tuple(int(a) for a in layout.numbers(LAYOUT_ALIGNMENT, np.uint32)) or (1,)
    header = TensorHeader(path, shape, data_type, "TILE" if page_type == TILE_PAGE else "ROW_MAJOR", tile,
                          alignment, (), [], schema_version=tensor.scalar(T_VERSION, N.Uint32Flags),
                          identifier=bytes(buf[4:8]) == FILE_IDENTIFIER)
    mesh = tensor.table(T_MESH, "MeshShape")
    header.mesh_shape = tuple(int(d) for d in mesh.numbers(0, np.uint32)) if mesh is not None else (1,)
    for shard in tensor.tables(T_SHARDS, "TensorShard"):
        kind, raw = shard.union_struct(SHARD_BUFFER_TYPE, SHARD_BUFFER, 16)
        if kind != INLINE_FILE_STORAGE:
            _fail(path, f"shard buffer of type {kind} is not stored in the file (only InlineFileStorage is read)")
        offset, nbytes = struct.unpack("<QQ", raw)
        coordinate = shard.table(SHARD_COORD, "MeshCoordinate")
        coords = tuple(int(v) for v in coordinate.numbers(0, np.uint32)) if coordinate is not None else ()
        header.shards.append(Shard(coords, offset, nbytes))
    topology = tensor.table(T_TOPOLOGY, "TensorTopology")
    if topology is not None:
        distribution = topology.table(TOPO_DISTRIBUTION, "distribution_shape")
        header.distribution = tuple(int(d) for d in distribution.numbers(0, np.uint32)) if distribution else ()
        header.placements = [(p.scalar(0, N.Uint8Flags), p.scalar(1, N.Int32Flags))
                             for p in topology.tables(TOPO_PLACEMENTS, "MeshMapperPlacement")]
        header.mesh_coords = [tuple(int(v) for v in c.numbers(0, np.uint32))
                              for c in topology.tables(TOPO_COORDS, "MeshCoordinate")]
    return header


def _check_shards(header):
    path = header.path
    if not header.shards:
        _fail(path, "tensor header lists no shards")
    if not header.shape or any(d == 0 for d in header.shape):
        _fail(path, f"logical shape {list(header.shape)} is empty")
    expected = header.shard_bytes()
    region = header.file_size - header.data_start
    for shard in header.shards:
        if shard.size != expected:
            _fail(path, f"shard at {list(shard.coordinate)} holds {shard.size} bytes; a {header.layout} "
                        f"{header.dtype_name} tensor of shape {list(header.shape)} (alignment "
                        f"{list(header.alignment)}) needs {expected}")
        if shard.offset > region or shard.size > region - shard.offset:
            _fail(path, f"shard at {list(shard.coordinate)} (bytes {shard.offset}..{shard.offset + shard.size} of the "
                        f"data) runs past the end of the file ({region} data bytes)")
    if len(header.placements) != len(header.distribution):
        _fail(path, f"topology has {len(header.placements)} placements for a distribution of "
                    f"{list(header.distribution)}")
    for kind, dim in header.placements:
        if kind == SHARD and not -len(header.shape) <= dim < len(header.shape):
            _fail(path, f"shard placement along dimension {dim} of a rank-{len(header.shape)} tensor")
        if kind not in (REPLICATE, SHARD):
            _fail(path, f"unknown placement type {kind}")
    header.placements = [(kind, dim % len(header.shape)) for kind, dim in header.placements]
    sharded = [dim for kind, dim in header.placements if kind == SHARD]
    if len(set(sharded)) != len(sharded):
        _fail(path, f"several mesh axes shard tensor dimension {sharded[0]}")
    if len(header.shards) > 1 and not header.placements:
        _fail(path, f"{len(header.shards)} shards but no tensor_topology to say how they combine")


def untilize(flat, rows, cols):
    """Row-major [rows, cols] from 32x32 tiles in row-major tile order, each tile's four 16x16 faces
    in the order top-left, top-right, bottom-left, bottom-right, each face row-major."""
    tiles = flat.reshape(rows // TILE, cols // TILE, TILE // FACE, TILE // FACE, FACE, FACE)
    return tiles.transpose(0, 2, 4, 1, 3, 5).reshape(rows, cols)


def _read_shard(header, shard):
    words = DATA_TYPES[header.data_type][1]
    rows, cols = header.matrix()
    data = np.fromfile(header.path, dtype=words, count=rows * cols, offset=header.data_start + shard.offset)
    if data.size != rows * cols:
        _fail(header.path, "file shrank while being read")
    matrix = untilize(data, rows, cols) if header.layout == "TILE" else data.reshape(rows, cols)
    del data
    logical = matrix.reshape(header.padded_dims())[tuple(slice(0, d) for d in header.shape)]
    if header.data_type == BFLOAT16:
        widened = np.empty(logical.shape, dtype=np.uint32)  # bfloat16 bits are a float32's upper half
        np.left_shift(logical, 16, out=widened, dtype=np.uint32)
        return widened.view(np.float32)
    return np.ascontiguousarray(logical, dtype=np.float32)


def _distribution_index(header, shard):
    if header.mesh_coords:
        if shard.coordinate not in header.mesh_coords:
            _fail(header.path, f"shard at {list(shard.coordinate)} is not in the topology's mesh coordinates")
        linear = header.mesh_coords.index(shard.coordinate)
    else:
        linear = header.shards.index(shard)
    return np.unravel_index(linear, header.distribution)


def read_tensor(header):
    """The tensor as float32 in its logical shape: one shard read when the tensor is replicated,
    every distinct block put in its place along the sharded dimensions otherwise."""
    if len(header.shards) == 1:
        return _read_shard(header, header.shards[0])
    count = int(np.prod(header.distribution, dtype=np.int64))
    if count != len(header.shards):
        _fail(header.path, f"{len(header.shards)} shards for a distribution of {list(header.distribution)}")
    if all(kind == REPLICATE for kind, _ in header.placements):
        return _read_shard(header, header.shards[0])
    out = np.empty(header.logical_shape(), dtype=np.float32)
    placed = set()
    for shard in header.shards:
        index = _distribution_index(header, shard)
        block = [slice(None)] * len(header.shape)
        for (kind, dim), position in zip(header.placements, index):
            if kind == SHARD:
                block[dim] = slice(position * header.shape[dim], (position + 1) * header.shape[dim])
        key = tuple((s.start, s.stop) for s in block)
        if key not in placed:
            out[tuple(block)] = _read_shard(header, shard)
            placed.add(key)
    return out


def stored_rows(header):
    """True when a file's rows can be read raw (rows.FileRows, see row_source): one shard (or replicas),
    leading dims 1, BFLOAT16 or FLOAT32."""
    replicated = len(header.shards) == 1 or all(kind == REPLICATE for kind, _ in header.placements)
    return replicated and header.data_type in (BFLOAT16, FLOAT32) and all(d == 1 for d in header.shape[:-2])


def row_source(header, scratch):
    """Raw row access to a file stored_rows() accepts: whole tile rows (TILE) or rows (ROW_MAJOR)."""
    rows, cols = header.matrix()
    dtype, width = ("bf16", 2) if header.data_type == BFLOAT16 else ("f32", 4)
    return FileRows(header.path, header.data_start + header.shards[0].offset, rows, cols, width, dtype, scratch,
                    TILE if header.layout == "TILE" else 1)


DATA_ALIGNMENT = 64


def _single_field_table(builder, vector):
    builder.StartObject(1)
    builder.PrependUOffsetTRelativeSlot(0, vector, 0)
    return builder.EndObject()


def _uint32_table(builder, values):
    """MeshShape or MeshCoordinate: a table whose one field is a [uint32] vector."""
    return _single_field_table(builder, builder.CreateNumpyVector(np.asarray(values, dtype="<u4")))


@functools.lru_cache(maxsize=256)  # a model's tensors share a few shapes; each header costs ~1 ms to build
def header_bytes(rows, cols, data_type=BFLOAT16):
    """The first bytes of a .tensorbin for a [1, 1, rows, cols] TILE tensor on one device, as ttnn 0.81.1's
    dump_tensor_flatbuffer writes them (the same objects built in the same order, so the same bytes):
    the uint64 header size, then the `Tensor` flatbuffer zero-padded so that the data starts on a
    64-byte boundary. The data that follows is tiled(rows) x tiled(cols) values of data_type."""
    width = 2 if data_type == BFLOAT16 else 4
    data_size = -(-rows // TILE) * TILE * -(-cols // TILE) * TILE * width
    builder = flatbuffers.Builder(512)
    shape = builder.CreateNumpyVector(np.array([1, 1, rows, cols], dtype="<u4"))
    alignment = builder.CreateNumpyVector(np.array([TILE, TILE], dtype="<u4"))
    builder.StartObject(3)  # Tile
    builder.PrependUint32Slot(TILE_W, TILE, 0)
    builder.PrependUint32Slot(TILE_H, TILE, 0)
    tile = builder.EndObject()
    page = _single_field_table(builder, tile)  # TilePageConfig
    builder.StartObject(6)  # MemoryConfig: interleaved in DRAM, every field at its default
    memory = builder.EndObject()
    builder.StartObject(5)  # TensorLayout
    builder.PrependUOffsetTRelativeSlot(LAYOUT_ALIGNMENT, alignment, 0)
    builder.PrependUOffsetTRelativeSlot(LAYOUT_MEMORY, memory, 0)
    builder.PrependUOffsetTRelativeSlot(LAYOUT_PAGE, page, 0)
    builder.PrependUint8Slot(LAYOUT_PAGE_TYPE, TILE_PAGE, 0)
    builder.PrependUint8Slot(LAYOUT_DTYPE, data_type, 0)
    layout = builder.EndObject()
    builder.StartObject(2)  # TensorSpec
    builder.PrependUOffsetTRelativeSlot(SPEC_LAYOUT, layout, 0)
    builder.PrependUOffsetTRelativeSlot(SPEC_SHAPE, shape, 0)
    spec = builder.EndObject()
    coordinate = _uint32_table(builder, [0, 0])
    builder.Prep(8, 16)  # InlineFileStorage {offset, size}
    builder.PrependUint64(data_size)
    builder.PrependUint64(0)
    storage = builder.Offset()
    builder.StartObject(3)  # TensorShard
    builder.PrependUOffsetTRelativeSlot(SHARD_COORD, coordinate, 0)
    builder.PrependUOffsetTRelativeSlot(SHARD_BUFFER, storage, 0)
    builder.PrependUint8Slot(SHARD_BUFFER_TYPE, INLINE_FILE_STORAGE, 0)
    shards = offsets_vector(builder, [builder.EndObject()])
    mesh = _uint32_table(builder, [1, 1])
    distribution = _uint32_table(builder, [1])
    builder.StartObject(2)  # MeshMapperPlacement: Replicate (the default type), tensor_dim -1
    builder.PrependInt32Slot(1, -1, 0)
    placements = offsets_vector(builder, [builder.EndObject()])
    coords = offsets_vector(builder, [_uint32_table(builder, [0, 0])])
    builder.StartObject(3)  # TensorTopology
    builder.PrependUOffsetTRelativeSlot(TOPO_COORDS, coords, 0)
    builder.PrependUOffsetTRelativeSlot(TOPO_PLACEMENTS, placements, 0)
    builder.PrependUOffsetTRelativeSlot(TOPO_DISTRIBUTION, distribution, 0)
    topology = builder.EndObject()
    builder.StartObject(4)  # Tensor
    builder.PrependUOffsetTRelativeSlot(T_TOPOLOGY, topology, 0)
    builder.PrependUOffsetTRelativeSlot(T_SHARDS, shards, 0)
    builder.PrependUOffsetTRelativeSlot(T_MESH, mesh, 0)
    builder.PrependUOffsetTRelativeSlot(T_SPEC, spec, 0)
    builder.Finish(builder.EndObject())
    body = bytes(builder.Output())
    header_size = -(-(8 + len(body)) // DATA_ALIGNMENT) * DATA_ALIGNMENT - 8
    return struct.pack("<Q", header_size) + body + bytes(header_size - len(body))
