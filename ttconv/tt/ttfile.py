"""Streaming reader and writer for tt-train msgpack weight files.

A tt-train file is one msgpack map of ``key -> [variant_index, value]``. The reader
indexes it (key, variant index, byte ranges) without turning weight arrays into
Python objects; the writer copies untouched entries byte for byte and streams new
float32 arrays in, in the input's order.
"""
import os
import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import interrupts, kernels
from ..errors import TtFileError
from .rows import DecodedRows, FileRows

HEADER_WINDOW = 1 << 16
SCAN_WINDOW = 1 << 20
MAX_NESTING = 16
MAX_SMALL_VALUE = 1 << 12
MAX_ENTRIES = 1 << 20

DATA_SUFFIX = "/value/data"
SHAPE_SUFFIX = "/value/shape"

# Roots of the training state that tt-train saves beside the model: AdamW (or SGD) and the scheduler.
OPTIMIZER_ROOTS = ("adamw/", "theta/")
OPTIMIZER_SCALARS = ("steps",)
SCHEDULER_ROOT = "scheduler/"


def state_group(key):
    """Which part of a tt-train file a key belongs to: "model", "optimizer" or "scheduler"."""
    if key.startswith(OPTIMIZER_ROOTS) or key in OPTIMIZER_SCALARS:
        return "optimizer"
    if key.startswith(SCHEDULER_ROOT):
        return "scheduler"
    return "model"


@dataclass(slots=True)
class Entry:
    """One map entry: where its key, variant index and value lie in the file."""

    key: str
    start: int
    value_start: int
    end: int
    variant: int
    kind: str
    key_end: int = 0
    n_elements: int = 0
    numeric: bool = False
    small_value: Optional[bytes] = None
    scalar: object = None
    assumed: bool = False  # taken for float32 values unscanned (TtFile's assume_float32)


class Parameter:
    """A tensor of the file: NAME with its NAME/value/data entry.

    Its shape (from NAME/value/shape) is checked on first use, so that a malformed entry
    the conversion leaves untouched does not stop it."""

    def __init__(self, tt, name, data):
        self.name = name
        self.data = data
        self._tt = tt
        self._dims = None

    @property
    def dims(self):
        if self._dims is None:
            self._dims = self._tt.check_dims(self.name, self.data)
        return self._dims

    @property
    def rows(self):
        return self.dims[-2] if len(self.dims) > 1 else 1

    @property
    def cols(self):
        return self.dims[-1]


class _Cursor:
    """Forward reader over a file with bounds checks against its size."""

    def __init__(self, handle, size, path, on_bytes=None):
        self.handle = handle
        self.size = size
        self.path = path
        self.on_bytes = on_bytes
        self.pos = 0
        self._buf = b""
        self._buf_start = 0
        self._window = None

    def window(self, count):
        """A reused buffer big enough for count numbers (up to SCAN_WINDOW bytes)."""
        size = min(SCAN_WINDOW, max(count * 9, 9))
        if self._window is None or self._window.size < size:
            self._window = np.empty(size, dtype=np.uint8)
        return self._window[:size]

    def fail(self, message, at=None):
        where = self.pos if at is None else at
        raise TtFileError(f"{self.path}: {message} (at byte {where})")

    def require(self, n, what):
        if n > self.size - self.pos:
            self.fail(f"file ends inside {what}: {n} bytes needed, {self.size - self.pos} left")

    def take(self, n, what):
        self.require(n, what)
        offset = self.pos - self._buf_start
        if offset < 0 or offset + n > len(self._buf):
            self.handle.seek(self.pos)
            self._buf = self.handle.read(max(n, HEADER_WINDOW))
            self._buf_start = self.pos
            offset = 0
        self.pos += n
        return self._buf[offset:offset + n]

    def peek(self, at, n):
        """n bytes at offset at, the position unchanged."""
        self.handle.seek(at)
        return self.handle.read(n)

    def byte(self, what):
        return self.take(1, what)[0]

    def uint(self, n, what):
        return int.from_bytes(self.take(n, what), "big")

    def skip(self, n, what):
        self.require(n, what)
        self.pos += n

    def walk_numbers(self, count, what, out=None):
        """Walk up to count msgpack numbers from pos (storing them as float32 in out, when
        given); returns how many were numbers before the first value that is not one."""
        window = self.window(count)
        done = 0
        while done < count:
            interrupts.check()
            if self.pos >= self.size:
                self.fail(f"file ends inside {what} after {done} of {count} values")
            self.handle.seek(self.pos)
            n = self.handle.readinto(memoryview(window)[: min(window.size, self.size - self.pos)])
            if out is None:
                walked, nbytes, bad = kernels.scan_numbers(window[:n], count - done)
            else:
                values, nbytes, bad = kernels.decode_numbers(window[:n], count - done)
                walked = values.size
                out[done:done + walked] = values
            done += walked
            self.pos += nbytes
            if self.on_bytes is not None:
                self.on_bytes(nbytes)
            if bad:
                return done
            if walked == 0:
                self.fail(f"file ends inside {what} after {done} of {count} values")
        return done

_FIXED_SIZES = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xCA: 4, 0xCB: 8}
_EXT_FIXED = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}


def _read_header(cur, what):
    """Read one msgpack type header: (kind, length or value). Payload not consumed for str/bin/ext."""
    tag = cur.byte(what)
    if tag <= 0x7F:
        return "int", tag
    if tag >= 0xE0:
        return "int", tag - 0x100
    if 0x80 <= tag <= 0x8F:
        return "map", tag & 0x0F
    if 0x90 <= tag <= 0x9F:
        return "array", tag & 0x0F
    if 0xA0 <= tag <= 0xBF:
        return "str", tag & 0x1F
    if tag in (0xD9, 0xDA, 0xDB):
        return "str", cur.uint(1 << (tag - 0xD9), what)
    if tag in (0xC4, 0xC5, 0xC6):
        return "bin", cur.uint(1 << (tag - 0xC4), what)
    if tag in (0xDC, 0xDD):
        return "array", cur.uint(2 if tag == 0xDC else 4, what)
    if tag in (0xDE, 0xDF):
        return "map", cur.uint(2 if tag == 0xDE else 4, what)
    if tag in (0xC7, 0xC8, 0xC9):
        length = cur.uint(1 << (tag - 0xC7), what)
        return "ext", length + 1
    if tag in _EXT_FIXED:
        return "ext", _EXT_FIXED[tag] + 1
    if tag in (0xC2, 0xC3):
        return "bool", tag == 0xC3
    if tag == 0xC0:
        return "nil", None
    if tag in (0xCA, 0xCB):
        return "float", struct.unpack(">f" if tag == 0xCA else ">d", cur.take(_FIXED_SIZES[tag], what))[0]
    if tag in (0xCC, 0xCD, 0xCE, 0xCF):
        return "int", cur.uint(_FIXED_SIZES[tag], what)
    if tag in (0xD0, 0xD1, 0xD2, 0xD3):
        size = _FIXED_SIZES[tag]
        return "int", int.from_bytes(cur.take(size, what), "big", signed=True)
    cur.fail(f"byte 0x{tag:02x} is not valid msgpack in {what}", at=cur.pos - 1)


def _skip_value(cur, kind, length, what, depth):
    if depth > MAX_NESTING:
        cur.fail(f"{what} is nested more than {MAX_NESTING} levels deep")
    if kind in ("str", "bin", "ext"):
        cur.skip(length, what)
    elif kind in ("array", "map"):
        items = length * (2 if kind == "map" else 1)
        cur.require(items, what)
        for _ in range(items):
            _skip_value(cur, *_read_header(cur, what), what, depth + 1)


def _skip_array(cur, count, what):
    """Skip an array's elements; returns True when all of them were numbers."""
    cur.require(count, what)
    done = cur.walk_numbers(count, what)
    if done == count:
        return True
    for _ in range(count - done):
        _skip_value(cur, *_read_header(cur, what), what, 1)
    return False


# Arrays at least this long are taken for float32 values, unscanned, by an optimistic index.
ASSUMED_MIN_VALUES = 1 << 12


class TtFile:
    """Index of a tt-train msgpack file: entries in file order, looked up by key."""

    def __init__(self, path, on_bytes=None, assume_float32=False):
        """Index the file; on_bytes(n) is called as weight arrays are scanned (for progress).

        With assume_float32, a long array whose first and last values are msgpack float32 and after
        which the next entry (or the end) follows is taken for float32 values without scanning them
        (the index must still account for every byte of the file, in entries of the right form). Only
        readers that check what they use may ask for it: kernels.gather reports a value that is not a
        float32 (the array is then decoded whatever its encodings); a conversion replaces the arrays it
        fills, and FileSource checks an assumed array it copies (confirm). Anything the optimistic
        index cannot place makes it index the file again, every value scanned."""
        self.path = os.fspath(path)
        self._assume = assume_float32
        try:
            handle = open(self.path, "rb")
        except OSError as exc:
            raise TtFileError(f"{self.path}: cannot open: {exc.strerror}") from None
        with handle:
            self.size = os.fstat(handle.fileno()).st_size
            if self.size == 0:
                raise TtFileError(f"{self.path}: file is empty, expected a tt-train msgpack map")
            try:
                self._index(_Cursor(handle, self.size, self.path, on_bytes))
            except TtFileError:
                if not self._assume:
                    raise
                self._assume = False
                self._index(_Cursor(handle, self.size, self.path, on_bytes))

    def _index(self, cur):
        self.entries = []
        self.by_key = {}
        kind, count = _read_header(cur, "the file header")
        if kind != "map":
            cur.fail(f"file starts with a msgpack {kind}, expected the map of a tt-train file", at=0)
        self.header_end = cur.pos
        if count > MAX_ENTRIES:
            cur.fail(f"map claims {count:,} entries, more than the {MAX_ENTRIES:,} a tt-train weights file can have",
                     at=0)
        cur.require(count * 2, f"a map of {count} entries")
        for number in range(count):
            self._read_entry(cur, number)
        if cur.pos != self.size:
            cur.fail(f"{self.size - cur.pos} bytes follow the end of the map")

    def _read_entry(self, cur, number):
        start = cur.pos
        kind, length = _read_header(cur, f"the key of entry {number}")
        if kind != "str":
            cur.fail(f"key of entry {number} is a msgpack {kind}, expected a string", at=start)
        raw_key = cur.take(length, f"the key of entry {number}")
        key_end = cur.pos
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            cur.fail(f"key of entry {number} is not UTF-8", at=start)
        what = f"the value of {key!r}"
        kind, length = _read_header(cur, what)
        if kind != "array" or length != 2:
            cur.fail(f"{what} is not a [variant_index, value] pair")
        kind, variant = _read_header(cur, what)
        if kind != "int" or variant < 0:
            cur.fail(f"variant index of {key!r} is not a non-negative integer")
        value_start = cur.pos
        kind, length = _read_header(cur, what)
        entry = Entry(key, start, value_start, 0, variant, kind, key_end)
        if kind == "array":
            entry.n_elements = length
            if self._assume and _looks_float32(cur, length):
                entry.numeric = entry.assumed = True
                cur.pos += 5 * length
                if cur.on_bytes is not None:
                    cur.on_bytes(5 * length)
            else:
                entry.numeric = _skip_array(cur, length, what)
        elif kind in ("str", "bin") and length <= MAX_SMALL_VALUE:
            entry.small_value = cur.take(length, what)
        elif kind in ("int", "bool", "float"):
            entry.scalar = length
        else:
            _skip_value(cur, kind, length, what, 1)
        entry.end = cur.pos
        if key in self.by_key:
            cur.fail(f"key {key!r} appears twice", at=start)
        self.entries.append(entry)
        self.by_key[key] = entry

    def confirm(self, entry):
        """Check that an assumed array (see __init__) ends where the optimistic index placed its end, its
        elements parsed one by one as a full index parses them; TtFileError otherwise. A copy of the
        entry is then the entry a full index sees."""
        with open(self.path, "rb") as handle:
            cur = _Cursor(handle, self.size, self.path)
            cur.pos = entry.value_start
            _, count = _read_header(cur, entry.key)
            _skip_array(cur, count, f"the value of {entry.key!r}")
        if cur.pos != entry.end:
            cur.fail(f"the array of {entry.key!r} is not the {entry.n_elements} float32 values its first and last "
                     "values and the entry after it suggest; the file is damaged", at=entry.value_start)

    def parameters(self, group=None):
        """Tensors of the file by name: every NAME with a NAME/value/data entry (only those of
        one state_group when group is given)."""
        return {
            entry.key[: -len(DATA_SUFFIX)]: Parameter(self, entry.key[: -len(DATA_SUFFIX)], entry)
            for entry in self.entries
            if entry.key.endswith(DATA_SUFFIX) and (group is None or state_group(entry.key) == group)
        }

    def weights(self):
        """The model's parameters (a msgpack save holds no separate master weights)."""
        return self.parameters("model")

    weights_note = None

    def is_training_state(self):
        """True when the file holds optimizer or scheduler state beside the model (a training save)."""
        return any(state_group(entry.key) != "model" for entry in self.entries)

    def open_source(self):
        """A FileSource that copies this file's bytes for TtWriter."""
        return FileSource(self)

    def check_dims(self, name, data_entry):
        """Dims from NAME/value/shape, checked against the data entry; TtFileError otherwise."""
        shape_entry = self.by_key.get(name + SHAPE_SUFFIX)
        if shape_entry is None:
            raise TtFileError(f"{self.path}: {data_entry.key} has no {name}{SHAPE_SUFFIX} entry")
        raw = shape_entry.small_value
        if shape_entry.kind not in ("bin", "str") or raw is None or len(raw) % 4 or not raw:
            raise TtFileError(
                f"{self.path}: {shape_entry.key} is not a list of little-endian uint32 dims "
                f"(msgpack {shape_entry.kind}, {len(raw) if raw is not None else '?'} bytes)"
            )
        dims = struct.unpack(f"<{len(raw) // 4}I", raw)
        if any(d != 1 for d in dims[:-2]):
            raise TtFileError(f"{self.path}: {shape_entry.key} is {list(dims)}, expected [1, 1, rows, cols]")
        if data_entry.kind != "array" or not data_entry.numeric:
            raise TtFileError(f"{self.path}: {data_entry.key} is not an array of numbers")
        if int(np.prod(dims, dtype=np.int64)) != data_entry.n_elements:
            raise TtFileError(
                f"{self.path}: {data_entry.key} holds {data_entry.n_elements} values "
                f"but its shape {list(dims)} says {int(np.prod(dims, dtype=np.int64))}"
            )
        return dims

    def read_values(self, entry):
        """Decode a numeric array entry into float32 (the whole array in memory)."""
        with open(self.path, "rb") as handle:
            cur = _Cursor(handle, self.size, self.path)
            cur.pos = entry.value_start
            kind, count = _read_header(cur, entry.key)
            out = np.empty(count, dtype=np.float32)
            if kind != "array" or cur.walk_numbers(count, entry.key, out) != count:
                cur.fail(f"{entry.key} is not an array of numbers")
        return out

    def row_source(self, param, scratch):
        """Row access (tt.rows) to a parameter's array: its msgpack bytes where every value can be a
        float32 (five bytes each; kernels.gather checks each one), else its values decoded whole."""
        entry = param.data
        payload = entry.end - 5 * entry.n_elements
        if entry.kind == "array" and payload - entry.value_start in (1, 3, 5):  # an array header's sizes
            return FileRows(self.path, payload, param.rows, param.cols, 5, "msgpack", scratch)
        return self.decoded_rows(param)

    def decoded_rows(self, param):
        """The parameter's values decoded whole to float32, as a row source."""
        return DecodedRows(self.read_values(param.data), param.cols)


def _looks_float32(cur, count):
    """True when an array of count values at cur.pos can be five-byte float32 values: long enough,
    inside the file, its first and last value tagged float32, and at its end the next entry's key
    (a str) or the end of the file."""
    end = cur.pos + 5 * count
    if count < ASSUMED_MIN_VALUES or end > cur.size:
        return False
    first, last = cur.peek(cur.pos, 1), cur.peek(end - 5, 1)
    following = cur.peek(end, 1) if end < cur.size else None
    return first == b"\xca" and last == b"\xca" and (following is None or 0xA0 <= following[0] <= 0xBF
                                                     or following[0] in (0xD9, 0xDA, 0xDB))


def _container_header(count, fixed, tag16, tag32):
    if count < 16:
        return bytes([fixed | count])
    if count < 1 << 16:
        return tag16 + count.to_bytes(2, "big")
    return tag32 + count.to_bytes(4, "big")


def array_header(count):
    """msgpack array header for count elements."""
    return _container_header(count, 0x90, b"\xdc", b"\xdd")


def map_header(count):
    """msgpack map header for count entries."""
    return _container_header(count, 0x80, b"\xde", b"\xdf")


def str_header(length):
    """msgpack str header for a UTF-8 string of length bytes."""
    if length < 32:
        return bytes([0xA0 | length])
    if length < 1 << 8:
        return b"\xd9" + bytes([length])
    if length < 1 << 16:
        return b"\xda" + length.to_bytes(2, "big")
    return b"\xdb" + length.to_bytes(4, "big")


def pack_key(key):
    raw = key.encode("utf-8")
    return str_header(len(raw)) + raw


def pack_int(value):
    """Smallest msgpack encoding of an integer, as msgpack-c writes it."""
    if 0 <= value < 0x80:
        return bytes([value])
    if -32 <= value < 0:
        return bytes([value & 0xFF])
    for tag, size, low, high in ((0xCC, 1, 0, 1 << 8), (0xCD, 2, 0, 1 << 16), (0xCE, 4, 0, 1 << 32),
                                 (0xCF, 8, 0, 1 << 64), (0xD0, 1, -(1 << 7), 0), (0xD1, 2, -(1 << 15), 0),
                                 (0xD2, 4, -(1 << 31), 0), (0xD3, 8, -(1 << 63), 0)):
        if low <= value < high:
            return bytes([tag]) + value.to_bytes(size, "big", signed=value < 0)
    raise ValueError(f"{value} does not fit a msgpack integer")


def pack_float32(value):
    """A float as msgpack-c writes a C++ float: an integer when the value is integral, else 0xca."""
    value = float(np.float32(value))
    if value.is_integer():
        return pack_int(int(value))
    return b"\xca" + struct.pack(">f", value)


def pack_bool(value):
    return b"\xc3" if value else b"\xc2"


def pack_bin(data):
    if len(data) < 1 << 8:
        return b"\xc4" + bytes([len(data)]) + data
    if len(data) < 1 << 16:
        return b"\xc5" + len(data).to_bytes(2, "big") + data
    return b"\xc6" + len(data).to_bytes(4, "big") + data


def pair_prefix(variant):
    """The [variant_index, ...] array header and index that precede a value."""
    return b"\x92" + pack_int(variant)


ZERO_CHUNK = 1 << 20


def write_int_zeros(count, write):
    """count msgpack zeros (one byte each, as msgpack-c writes a 0.0 float)."""
    chunk = bytes(min(count, ZERO_CHUNK))
    while count:
        n = min(count, ZERO_CHUNK)
        write(chunk[:n])
        count -= n


class FileSource:
    """The bytes of a TtFile's entries, copied from the file, for TtWriter."""

    COPY_CHUNK = 1 << 22

    def __init__(self, tt):
        self.tt = tt
        self._handle = open(tt.path, "rb")

    def close(self):
        self._handle.close()

    def _copy(self, start, end, write):
        self._handle.seek(start)
        while start < end:
            chunk = self._handle.read(min(self.COPY_CHUNK, end - start))
            if not chunk:
                raise TtFileError(f"{self.tt.path}: file shrank while being read")
            write(chunk)
            start += len(chunk)

    def write_header(self, write):
        self._copy(0, self.tt.header_end, write)

    def write_key(self, entry, key, write):
        """The entry's key (or key instead) and its variant index."""
        if key == entry.key:
            self._copy(entry.start, entry.value_start, write)
        else:
            write(pack_key(key))
            self._copy(entry.key_end, entry.value_start, write)

    def write_value(self, entry, write):
        if entry.assumed:
            self.tt.confirm(entry)
        self._copy(entry.value_start, entry.end, write)


class TtWriter:
    """Writes a tt-train file entry by entry in the order of a source file (a TtFile, or a
    file built from a config): each entry copied, renamed, or given a new value.

    Call ``begin()`` once, then for every source entry, in order, one of ``copy_entry``,
    ``replace_value``, ``zero_array``, or ``start_value(entry, count)`` followed by ``write()``
    calls that supply exactly ``count`` encoded float32 values; then ``finish()``.
    A ``key`` argument writes the entry under another key (a new prefix).
    """

    def __init__(self, source, out):
        self.source = source
        self.out = out
        self._entries = source.tt.entries
        self._next = 0
        self._pending = 0
        self._begun = False

    def close(self):
        self.source.close()

    def _expect(self, entry):
        if not self._begun:
            raise RuntimeError("TtWriter.begin() must be called first")
        if self._pending:
            raise RuntimeError(f"{self._pending} values of the previous entry were not written")
        if self._next >= len(self._entries) or self._entries[self._next] is not entry:
            raise RuntimeError(f"entries must be written in file order; got {entry.key!r} out of turn")
        self._next += 1

    def begin(self):
        if self._begun:
            raise RuntimeError("TtWriter.begin() called twice")
        self._begun = True
        self.source.write_header(self.out.write)

    def copy_entry(self, entry, key=None):
        """Copy an entry byte for byte (under key, when given)."""
        self._expect(entry)
        self.source.write_key(entry, key or entry.key, self.out.write)
        self.source.write_value(entry, self.out.write)

    def replace_value(self, entry, packed, key=None):
        """Keep the entry's key and variant index, with the msgpack value packed instead."""
        self._expect(entry)
        self.source.write_key(entry, key or entry.key, self.out.write)
        self.out.write(packed)

    def zero_array(self, entry, count, key=None):
        """Keep the entry's key and variant index, with an array of count zeros as its value."""
        self._expect(entry)
        self.source.write_key(entry, key or entry.key, self.out.write)
        self.out.write(array_header(count))
        write_int_zeros(count, self.out.write)

    def start_value(self, entry, count, key=None):
        """Write the entry's key and variant index, then open a float array of count values."""
        self._expect(entry)
        self.source.write_key(entry, key or entry.key, self.out.write)
        self.out.write(array_header(count))
        self._pending = count

    def reserve(self, count):
        """A uint8 array to encode count values into, in the output's own buffer (no copy), or None
        when the output cannot lend one; commit(count) writes them."""
        if count > self._pending:
            raise RuntimeError(f"{count} values reserved where {self._pending} remain")
        reserve = getattr(self.out, "reserve", None)
        return reserve(count * 5) if reserve is not None else None

    def commit(self, count):
        """Write the count values encoded into the array reserve() gave."""
        if count > self._pending:
            raise RuntimeError(f"{count} values committed where {self._pending} remain")
        self._pending -= count
        self.out.commit(count * 5)

    def write(self, encoded):
        """Write encoded float32 values (5 bytes each) of the open array."""
        count = len(encoded) // 5
        if count > self._pending:
            raise RuntimeError(f"{count} values written where {self._pending} remain")
        self._pending -= count
        self.out.write(encoded)

    def finish(self):
        if self._pending or self._next != len(self._entries):
            raise RuntimeError(
                f"finish() after {self._next} of {len(self._entries)} entries "
                f"with {self._pending} values pending"
            )
