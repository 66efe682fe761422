"""Pickles written opcode by opcode, without the classes they name: what ttml's checkpoints hold.

A ttml checkpoint is pickles back to back (ttconv.tt.ttml). Its header names classes of a training
script (model_builders.ModelConfig, ...) that ttconv cannot and will not import, and its tensors
can be larger than memory should hold. So the header is emitted from plain values and Instance
objects (a class by module and name, and the fields a dataclass pickles as its state), and an
array record as a prefix, its raw bytes streamed by the caller, and a suffix. The opcodes are
protocol 4's, unframed (framing is optional), as pickle.load and ttconv's own reader read them.
"""
import struct
from dataclasses import dataclass

PROTOCOL = b"\x80\x04"
STOP = b"."
# numpy 1.x and 2.x both load arrays through this name (2.x also under numpy._core)
RECONSTRUCT = ("numpy.core.multiarray", "_reconstruct")
# the state numpy pickles a dtype with: (version, byte order, ..., itemsize, alignment, flags);
# ml_dtypes' bfloat16 is a user dtype of 2 bytes whose flags say so
DTYPES = {
    "FLOAT32": (("numpy", "dtype"), "f4", (3, "<", None, None, None, -1, -1, 0)),
    "BFLOAT16": (("numpy", "dtype"), ("ml_dtypes", "bfloat16"), (3, "<", None, None, None, 2, 2, 64)),
}
ITEM_SIZES = {"FLOAT32": 4, "BFLOAT16": 2}


@dataclass(frozen=True)
class Instance:
    """An object of class module.name whose pickled state is fields (a dataclass's, field by field)."""

    module: str
    name: str
    fields: tuple  # ((field name, value), ...) in the class's field order


def _text(value):
    data = value.encode("utf-8")
    if len(data) < 256:
        return b"\x8c" + bytes([len(data)]) + data
    return b"X" + struct.pack("<I", len(data)) + data


def _global(module, name):
    return _text(module) + _text(name) + b"\x93"


def _int(value):
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -2 ** 31 <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _tuple(items):
    if len(items) <= 3:
        return b"".join(_value(v) for v in items) + (b")", b"\x85", b"\x86", b"\x87")[len(items)]
    return b"(" + b"".join(_value(v) for v in items) + b"t"


def _value(value):
    if value is None:
        return b"N"
    if value is True or value is False:
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, float):
        return b"G" + struct.pack(">d", value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, tuple):
        return _tuple(value)
    if isinstance(value, list):
        return b"]" + (b"(" + b"".join(_value(v) for v in value) + b"e" if value else b"")
    if isinstance(value, dict):
        items = b"".join(_value(k) + _value(v) for k, v in value.items())
        return b"}" + (b"(" + items + b"u" if value else b"")
    if isinstance(value, Instance):  # copyreg.__newobj__: cls.__new__(cls), then its __dict__ from the state
        return _global(value.module, value.name) + b")\x81" + _value(dict(value.fields)) + b"b"
    raise TypeError(f"cannot pickle a {type(value).__name__}")


def dumps(value):
    """One pickle of value: None, bools, ints, floats, strings, tuples, lists, dicts and Instances."""
    return PROTOCOL + _value(value) + STOP


def _dtype(kind):
    (module, name), code, state = DTYPES[kind]
    code_bytes = _global(*code) if isinstance(code, tuple) else _text(code)
    return _global(module, name) + code_bytes + b"\x89\x88\x87R" + _tuple(state) + b"b"


def array_prefix(shape, kind):
    """The bytes of an array pickle before its data: a C-order numpy array of shape and kind
    ("FLOAT32" or "BFLOAT16"), as numpy.ndarray.__reduce__ describes it; the data follows as one
    byte string of nbytes(shape, kind) bytes, then ARRAY_SUFFIX."""
    nbytes = array_bytes(shape, kind)
    if nbytes < 256:
        data_opcode = b"C" + bytes([nbytes])
    elif nbytes < 2 ** 32:
        data_opcode = b"B" + struct.pack("<I", nbytes)
    else:
        data_opcode = b"\x8e" + struct.pack("<Q", nbytes)
    return (PROTOCOL + _global(*RECONSTRUCT) + _global("numpy", "ndarray") + _int(0) + b"\x85" + b"C\x01b"
            + b"\x87R" + b"(" + _int(1) + _tuple(tuple(int(d) for d in shape)) + _dtype(kind) + b"\x89"
            + data_opcode)


ARRAY_SUFFIX = b"tb" + STOP


def array_bytes(shape, kind):
    """Bytes of an array's data."""
    count = 1
    for d in shape:
        count *= int(d)
    return count * ITEM_SIZES[kind]
