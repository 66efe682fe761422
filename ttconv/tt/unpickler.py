"""A pickle reader that runs nothing: tt-train's Python side saves its checkpoints as pickles.

`pickle.load` calls whatever a pickle names. This reader interprets the opcodes itself and builds
only data: numpy arrays and dtypes (ml_dtypes' bfloat16 included, held as its uint16 bits), plain
containers, and, for a
class it is not given (a training script's config dataclass, ttml's enums, its CharTokenizer),
an inert Record of the fields the pickle holds. A class is never imported, nothing is called:
the allowed constructors below are ttconv's own functions. Any other name the pickle would
import or call is refused with an error naming it.

Large byte strings (an array's data) stay in the file: they are Blobs, read when asked, so a
record of any size is parsed in bounded memory.
"""
import _compat_pickle
import importlib.util
import re
import struct
import sys
from dataclasses import dataclass, field

import numpy as np

from .. import bf16
from ..errors import TtFileError

LARGE = 1 << 16  # byte strings at least this long are left in the file as Blobs
MAX_SMALL_INT_BYTES = 64  # LONG1/LONG4 integers longer than this are refused
HEADER_ROOTS = frozenset({"ttml", "_ttml", "model_builders", "__main__"})  # their classes are always inert
# Module roots whose names are refused unless listed in CONSTRUCTORS (real code a pickle could reach).
REFUSED_ROOTS = frozenset(getattr(sys, "stdlib_module_names", ())) | {
    "builtins", "__builtin__", "numpy", "ml_dtypes", "jax", "jaxlib", "ttconv"} | {
    name.split(".", 1)[0] for name in _compat_pickle.IMPORT_MAPPING}
# a class name (model_builders' private spec classes, _LlamaSpec, _DeepSeekSpec, start with "_")
_CLASS_NAME = re.compile(r"_?[A-Z][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DTYPE_CODE = re.compile(r"[<>|=]?(f[248]|i[1248]|u[1248]|b1|\?)")


@dataclass(frozen=True)
class Blob:
    """Bytes left in the file: size bytes from offset. text: the bytes are UTF-8 text; latin1: that
    text's characters are the values' bytes (how protocol 2 pickles bytes)."""

    offset: int
    size: int
    text: bool = False
    latin1: bool = False


@dataclass(frozen=True)
class ClassRef:
    """A class a pickle names and that is never imported."""

    module: str
    name: str

    def __str__(self):
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Record:
    """An inert instance of a class that is not imported: its constructor arguments and fields."""

    cls: ClassRef
    args: tuple = ()
    fields: dict = field(default_factory=dict)

    def __str__(self):
        inner = ", ".join([repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.fields.items()])
        return f"{self.cls.name}({inner})"


@dataclass(eq=False)
class Array:
    """A numpy array as the pickle declares it: shape, dtype and its data (bytes, or a Blob)."""

    shape: tuple
    dtype: np.dtype  # for bfloat16: uint16, its bit patterns
    data: object
    fortran: bool = False
    bfloat16: bool = False

    @property
    def nbytes(self):
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def dtype_name(self):
        return "bfloat16" if self.bfloat16 else self.dtype.name


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NDARRAY = _Marker("numpy.ndarray")
BFLOAT16 = _Marker("ml_dtypes.bfloat16")


@dataclass(eq=False)
class _ArrayStub:
    """What numpy's _reconstruct returns: an array waiting for its BUILD state."""


@dataclass(eq=False)
class _Dtype:
    """A dtype under construction (numpy.dtype(...) then BUILD with its byte order)."""

    dtype: np.dtype
    bfloat16: bool = False


def _new_dtype(where, code, align=False, copy=True):
    if code is BFLOAT16:
        return _Dtype(np.dtype("<u2"), bfloat16=True)
    if isinstance(code, str) and _DTYPE_CODE.fullmatch(code):
        return _Dtype(np.dtype(code))
    raise TtFileError(f"{where}: refuses dtype {code!r} (only numbers and bfloat16 are read)")


def _reconstruct(where, cls, shape=(0,), typecode=b"b"):
    if cls is not NDARRAY:
        raise TtFileError(f"{where}: numpy's _reconstruct of {cls!r}, not numpy.ndarray, is refused")
    return _ArrayStub()


def _dtype_of(where, value):
    if isinstance(value, _Dtype):
        return value
    raise TtFileError(f"{where}: expected a dtype, found {type(value).__name__}")


def _shape_of(where, value):
    if not isinstance(value, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in value):
        raise TtFileError(f"{where}: array shape {value!r} is not a tuple of sizes")
    return value


def _check_data(where, shape, dtype, data):
    array = Array(shape, dtype.dtype, data, bfloat16=dtype.bfloat16)
    size = data.size if isinstance(data, Blob) else len(data) if isinstance(data, (bytes, bytearray)) else None
    if size is None:
        raise TtFileError(f"{where}: array data is a {type(data).__name__}, not bytes (object arrays are refused)")
    if isinstance(data, Blob) and data.text and not data.latin1:
        raise TtFileError(f"{where}: array data is text, not bytes")
    if not (isinstance(data, Blob) and data.latin1) and size != array.nbytes:
        raise TtFileError(f"{where}: array of shape {list(shape)} {array.dtype_name} declares {array.nbytes:,} bytes "
                          f"but its data holds {size:,}")
    return array


def _frombuffer(where, buffer, dtype, shape, order="C"):
    if order not in ("C", "F"):
        raise TtFileError(f"{where}: array order {order!r}")
    array = _check_data(where, _shape_of(where, shape), _dtype_of(where, dtype),
                        bytes(buffer) if isinstance(buffer, bytearray) else buffer)
    array.fortran = order == "F"
    return array


def _encode(where, text, encoding):
    if encoding != "latin1":
        raise TtFileError(f"{where}: _codecs.encode with {encoding!r} is refused (only latin1, as protocol 2 uses)")
    if isinstance(text, Blob) and text.text:
        return Blob(text.offset, text.size, text=True, latin1=True)
    if isinstance(text, str):
        try:
            return text.encode("latin1")
        except UnicodeEncodeError:
            raise TtFileError(f"{where}: latin1 text with characters beyond latin1") from None
    raise TtFileError(f"{where}: _codecs.encode of a {type(text).__name__}")


def _ordered_dict(where, items=()):
    try:
        return dict(items)
    except (TypeError, ValueError):
        raise TtFileError(f"{where}: OrderedDict from {type(items).__name__}, not key/value pairs") from None


def _scalar(where, dtype, data):
    dtype = _dtype_of(where, dtype)
    if not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        name = "bfloat16" if dtype.bfloat16 else dtype.dtype.name
        raise TtFileError(f"{where}: numpy scalar of {name} with {type(data).__name__} data")
    value = np.frombuffer(data, dtype=dtype.dtype)
    return (bf16.widen(value) if dtype.bfloat16 else value)[0]


def _plain(kind):
    def build(where, items=()):
        if not isinstance(items, (list, tuple, set, frozenset)):
            raise TtFileError(f"{where}: {kind.__name__} of a {type(items).__name__}")
        try:
            return kind(items)
        except TypeError:
            raise TtFileError(f"{where}: {kind.__name__} of unhashable values") from None
    return build


# The only names a pickle may call (what numpy, ml_dtypes and pickle itself use for data), each
# ttconv's own function.
CONSTRUCTORS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy", "dtype"): _new_dtype,
    ("_codecs", "encode"): _encode,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _plain(set), ("__builtin__", "set"): _plain(set),
    ("builtins", "frozenset"): _plain(frozenset), ("__builtin__", "frozenset"): _plain(frozenset),
}
VALUES = {("numpy", "ndarray"): NDARRAY, ("ml_dtypes", "bfloat16"): BFLOAT16}


def _importable(root):
    try:
        return importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        return False


def resolve_global(where, module, name):
    """What a pickle's global (module, name) stands for: one of ttconv's constructors or values, or a
    ClassRef for a class that cannot be imported here (or belongs to ttml or its training scripts);
    TtFileError for anything else."""
    # pickle.load reads Python 2 names as their Python 3 modules (commands.Popen is subprocess.Popen)
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    key = (module, name)
    if key in CONSTRUCTORS:
        return CONSTRUCTORS[key]
    if key in VALUES:
        return VALUES[key]
    root = module.split(".", 1)[0]
    if _CLASS_NAME.fullmatch(name) and all(part.isidentifier() for part in module.split(".")) and \
            root not in REFUSED_ROOTS and (root in HEADER_ROOTS or not _importable(root)):
        return ClassRef(module, name)
    raise TtFileError(f"{where}: refuses to import {module}.{name}: a checkpoint may only hold arrays, plain "
                      "values and records of classes that are not imported; nothing in it is run")


class _Mark:
    pass


_MARK = _Mark()


def _build(where, obj, state):
    """The BUILD opcode: an array's or dtype's state, or fields of a Record."""
    if isinstance(obj, _ArrayStub):
        if not isinstance(state, tuple) or len(state) != 5:
            raise TtFileError(f"{where}: array state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, data = state
        array = _check_data(where, _shape_of(where, shape), _dtype_of(where, dtype), data)
        array.fortran = bool(fortran)
        return array
    if isinstance(obj, _Dtype):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            if state[1] == ">" and obj.dtype.itemsize > 1:
                obj.dtype = obj.dtype.newbyteorder(">")
            return obj
        raise TtFileError(f"{where}: dtype state {state!r} is not understood")
    if isinstance(obj, Record):
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        for part in (state, slots):
            if part is None:
                continue
            if not isinstance(part, dict) or not all(isinstance(k, str) for k in part):
                raise TtFileError(f"{where}: state of {obj.cls} is not a dict of fields")
            obj.fields.update(part)
        return obj
    raise TtFileError(f"{where}: BUILD on a {type(obj).__name__} is refused")


def _call(where, func, args):
    """The REDUCE opcode: one of ttconv's constructors, or an inert Record of a ClassRef."""
    if not isinstance(args, tuple):
        raise TtFileError(f"{where}: call arguments are a {type(args).__name__}, not a tuple")
    if isinstance(func, ClassRef):
        return Record(func, args)
    if func in CONSTRUCTORS.values():
        try:
            return func(where, *args)
        except TypeError:
            raise TtFileError(f"{where}: wrong arguments for {func.__name__}: {len(args)} given") from None
    raise TtFileError(f"{where}: refuses to call {func!r}: only numpy's array and dtype constructors are allowed")


class Unpickler:
    """Reads pickles one after another from an open binary file (load(), at_end())."""

    def __init__(self, handle, path, size):
        self._f = handle
        self._path = path
        self._size = size
        self._record = 0

    def tell(self):
        return self._f.tell()

    def at_end(self):
        """True when no byte follows the last pickle read."""
        return self._f.tell() >= self._size

    def _where(self):
        return f"{self._path}: record {self._record} (at byte {self._f.tell():,})"

    def _read(self, n):
        data = self._f.read(n)
        if len(data) != n:
            raise TtFileError(f"{self._path}: file ends inside record {self._record} (truncated?)")
        return data

    def _length(self, fmt):
        n = struct.unpack(fmt, self._read(struct.calcsize(fmt)))[0]
        if n < 0 or n > self._size - self._f.tell():
            raise TtFileError(f"{self._where()}: declares {n:,} bytes but only "
                              f"{max(0, self._size - self._f.tell()):,} remain in the file (truncated?)")
        return n

    def _bytes(self, fmt, text=False):
        n = self._length(fmt)
        if n >= LARGE:
            blob = Blob(self._f.tell(), n, text=text)
            self._f.seek(n, 1)
            return blob
        data = self._read(n)
        if not text:
            return data
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise TtFileError(f"{self._where()}: text that is not UTF-8") from None

    def _pop_mark(self, stack, marks):
        if not marks:
            raise TtFileError(f"{self._where()}: no MARK on the stack")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    def load(self):
        """The next pickle, built as described above; TtFileError when it is malformed or refused."""
        stack, marks, memo = [], [], {}
        where = self._where
        read = self._read

        def pop():
            if not stack or (marks and len(stack) <= marks[-1]):
                raise TtFileError(f"{where()}: stack underflow")
            return stack.pop()

        def top():
            if not stack:
                raise TtFileError(f"{where()}: stack underflow")
            return stack[-1]

        def memo_get(index):
            if index not in memo:
                raise TtFileError(f"{where()}: memo {index} is read before it is written")
            stack.append(memo[index])

        while True:
            op = self._f.read(1)
            if not op:
                raise TtFileError(f"{self._path}: file ends inside record {self._record} (truncated?)")
            code = op[0]
            if code == 0x80:  # PROTO
                protocol = read(1)[0]
                if not 2 <= protocol <= 5:
                    raise TtFileError(f"{where()}: pickle protocol {protocol} (ttconv reads 2 to 5)")
            elif code == 0x95:  # FRAME: a length only; the opcodes follow inline
                read(8)
            elif code == 0x2E:  # STOP
                value = pop()
                if stack or marks:
                    raise TtFileError(f"{where()}: values left on the stack at STOP")
                self._record += 1
                return value
            elif code == 0x28:  # MARK
                marks.append(len(stack))
            elif code == 0x30:  # POP
                pop()
            elif code == 0x31:  # POP_MARK
                self._pop_mark(stack, marks)
            elif code == 0x32:  # DUP
                stack.append(top())
            elif code == 0x4E:  # NONE
                stack.append(None)
            elif code == 0x88:
                stack.append(True)
            elif code == 0x89:
                stack.append(False)
            elif code == 0x4A:  # BININT
                stack.append(struct.unpack("<i", read(4))[0])
            elif code == 0x4B:  # BININT1
                stack.append(read(1)[0])
            elif code == 0x4D:  # BININT2
                stack.append(struct.unpack("<H", read(2))[0])
            elif code in (0x8A, 0x8B):  # LONG1, LONG4
                n = read(1)[0] if code == 0x8A else struct.unpack("<i", read(4))[0]
                if not 0 <= n <= MAX_SMALL_INT_BYTES:
                    raise TtFileError(f"{where()}: an integer of {n} bytes")
                stack.append(int.from_bytes(read(n), "little", signed=True))
            elif code == 0x47:  # BINFLOAT
                stack.append(struct.unpack(">d", read(8))[0])
            elif code == 0x8C:  # SHORT_BINUNICODE
                stack.append(self._bytes("<B", text=True))
            elif code == 0x58:  # BINUNICODE
                stack.append(self._bytes("<I", text=True))
            elif code == 0x8D:  # BINUNICODE8
                stack.append(self._bytes("<Q", text=True))
            elif code == 0x43:  # SHORT_BINBYTES
                stack.append(self._bytes("<B"))
            elif code == 0x42:  # BINBYTES
                stack.append(self._bytes("<I"))
            elif code in (0x8E, 0x96):  # BINBYTES8, BYTEARRAY8 (in-band buffers of protocol 5)
                stack.append(self._bytes("<Q"))
            elif code == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif code == 0x74:  # TUPLE
                stack.append(tuple(self._pop_mark(stack, marks)))
            elif code in (0x85, 0x86, 0x87):  # TUPLE1..3
                n = code - 0x84
                items = [pop() for _ in range(n)][::-1]
                stack.append(tuple(items))
            elif code == 0x5D:  # EMPTY_LIST
                stack.append([])
            elif code == 0x6C:  # LIST
                stack.append(list(self._pop_mark(stack, marks)))
            elif code == 0x61:  # APPEND
                item = pop()
                self._container(top(), list).append(item)
            elif code == 0x65:  # APPENDS
                items = self._pop_mark(stack, marks)
                self._container(top(), list).extend(items)
            elif code == 0x7D:  # EMPTY_DICT
                stack.append({})
            elif code == 0x64:  # DICT
                items = self._pop_mark(stack, marks)
                stack.append(self._pairs({}, items))
            elif code == 0x73:  # SETITEM
                value, key = pop(), pop()
                self._pairs(self._container(top(), dict), [key, value])
            elif code == 0x75:  # SETITEMS
                items = self._pop_mark(stack, marks)
                self._pairs(self._container(top(), dict), items)
            elif code == 0x8F:  # EMPTY_SET
                stack.append(set())
            elif code == 0x90:  # ADDITEMS
                items = self._pop_mark(stack, marks)
                self._hashable(lambda: self._container(top(), set).update(items))
            elif code == 0x91:  # FROZENSET
                items = self._pop_mark(stack, marks)
                stack.append(self._hashable(lambda: frozenset(items)))
            elif code == 0x71:  # BINPUT
                memo[read(1)[0]] = top()
            elif code == 0x72:  # LONG_BINPUT
                memo[struct.unpack("<I", read(4))[0]] = top()
            elif code == 0x94:  # MEMOIZE
                memo[len(memo)] = top()
            elif code == 0x68:  # BINGET
                memo_get(read(1)[0])
            elif code == 0x6A:  # LONG_BINGET
                memo_get(struct.unpack("<I", read(4))[0])
            elif code == 0x63:  # GLOBAL "module\nname\n"
                module, name = self._line(), self._line()
                stack.append(resolve_global(where(), module, name))
            elif code == 0x93:  # STACK_GLOBAL
                name, module = pop(), pop()
                if not isinstance(module, str) or not isinstance(name, str):
                    raise TtFileError(f"{where()}: STACK_GLOBAL of non-strings")
                stack.append(resolve_global(where(), module, name))
            elif code == 0x52:  # REDUCE
                args, func = pop(), pop()
                stack.append(_call(where(), func, args))
            elif code in (0x81, 0x92):  # NEWOBJ, NEWOBJ_EX: cls.__new__(cls, *args) of a class not imported
                kwargs = pop() if code == 0x92 else {}
                args, cls = pop(), pop()
                if not isinstance(cls, ClassRef):
                    raise TtFileError(f"{where()}: refuses to create a {cls!r}")
                stack.append(Record(cls, args if isinstance(args, tuple) else (args,),
                                    dict(kwargs) if isinstance(kwargs, dict) else {}))
            elif code == 0x62:  # BUILD
                state = pop()
                obj = pop()
                stack.append(_build(where(), obj, state))
            else:
                raise TtFileError(f"{where()}: refuses pickle opcode {op!r} ({OPCODE_NAMES.get(code, 'unknown')})")

    def _line(self):
        data = bytearray()
        while not data.endswith(b"\n"):
            if len(data) > 256:
                raise TtFileError(f"{self._where()}: a global's name is longer than 256 bytes")
            data += self._read(1)
        try:
            return data[:-1].decode("ascii")
        except UnicodeDecodeError:
            raise TtFileError(f"{self._where()}: a global's name that is not ASCII") from None

    def _container(self, value, kind):
        if not isinstance(value, kind):
            raise TtFileError(f"{self._where()}: adds items to a {type(value).__name__}, not a {kind.__name__}")
        return value

    def _hashable(self, action):
        try:
            return action()
        except TypeError:
            raise TtFileError(f"{self._where()}: an unhashable key or set item") from None

    def _pairs(self, target, items):
        if len(items) % 2:
            raise TtFileError(f"{self._where()}: a dict built from an odd number of items")
        for i in range(0, len(items), 2):
            self._hashable(lambda: target.__setitem__(items[i], items[i + 1]))
        return target


# Opcodes named in refusals (protocol 0/1 calls, persistent ids, extension codes, out-of-band buffers).
OPCODE_NAMES = {0x69: "INST", 0x6F: "OBJ", 0x50: "PERSID", 0x51: "BINPERSID", 0x82: "EXT1", 0x83: "EXT2",
                0x84: "EXT4", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER", 0x49: "INT", 0x4C: "LONG",
                0x46: "FLOAT", 0x53: "STRING", 0x54: "BINSTRING", 0x55: "SHORT_BINSTRING", 0x56: "UNICODE",
                0x70: "PUT", 0x67: "GET"}


def is_pickle(head):
    """True when a file's first bytes open a pickle of protocol 2 to 5."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_blob(handle, path, blob):
    """The bytes a Blob stands for (latin1 text decoded back to bytes)."""
    handle.seek(blob.offset)
    data = handle.read(blob.size)
    if len(data) != blob.size:
        raise TtFileError(f"{path}: file ends inside an array's data (truncated?)")
    if not blob.latin1:
        return data
    try:
        return data.decode("utf-8", "surrogatepass").encode("latin1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise TtFileError(f"{path}: protocol 2 array data at byte {blob.offset:,} is not latin1 text") from None
