"""Bounds-checked reading of flatbuffer tables, and the one building step Google's flatbuffers
Builder lacks (a vector of tables).

The runtime's Table follows offsets without looking (it has no Verifier) and costs a few
calls a field, so tables are read here with struct, every table, vtable, field, vector
and string checked against the buffer first; a bad offset raises FlatbufferError naming
what was being read. Schema-driven reading never recurses on the data itself, so cycles
cannot loop.
"""
import struct

import numpy as np
from flatbuffers import number_types as N

UOFFSET = N.UOffsetTFlags.bytewidth
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


class FlatbufferError(ValueError):
    """A flatbuffer that does not hold what its offsets claim."""


def offsets_vector(builder, offsets):
    """A vector of tables or strings (their offsets, in order) built with a flatbuffers.Builder."""
    builder.StartVector(UOFFSET, len(offsets), UOFFSET)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _u32(buf, pos):
    return _U32.unpack_from(buf, pos)[0]


def root(buf, what):
    """The root table of a finished buffer (bytes)."""
    if len(buf) < 2 * UOFFSET:
        raise FlatbufferError(f"{what}: {len(buf)} bytes, too short for a flatbuffer")
    return FlatTable(buf, _u32(buf, 0), what)


class FlatTable:
    """One table of a buffer, its vtable checked on construction."""

    __slots__ = ("buf", "what", "_pos", "_vtable", "_vtable_size", "_size")

    def __init__(self, buf, pos, what):
        self.buf, self.what, self._pos = buf, what, pos
        if pos < 0 or pos + 4 > len(buf) or pos % 4:
            self._fail(f"table at byte {pos} lies outside the {len(buf)}-byte buffer or is misaligned")
        vtable = pos - _I32.unpack_from(buf, pos)[0]
        if vtable < 0 or vtable + 4 > len(buf) or vtable % 2:
            self._fail(f"vtable of the table at byte {pos} lies outside the buffer")
        vtable_size = _U16.unpack_from(buf, vtable)[0]
        self._size = _U16.unpack_from(buf, vtable + 2)[0]
        if vtable_size < 4 or vtable_size % 2 or vtable + vtable_size > len(buf):
            self._fail(f"vtable at byte {vtable} claims {vtable_size} bytes")
        if self._size < 4 or pos + self._size > len(buf):
            self._fail(f"table at byte {pos} claims {self._size} bytes")
        self._vtable, self._vtable_size = vtable, vtable_size

    def _fail(self, message):
        raise FlatbufferError(f"{self.what}: {message}")

    def _field(self, slot, width):
        entry = 4 + 2 * slot
        if entry >= self._vtable_size:  # a field newer than the writer's schema
            return None
        offset = _U16.unpack_from(self.buf, self._vtable + entry)[0]
        if offset == 0:
            return None
        if offset + width > self._size:
            self._fail(f"field {slot} ({width} bytes at +{offset}) lies outside its {self._size}-byte table")
        return self._pos + offset

    def scalar(self, slot, flags, default=0):
        """A scalar field (flags: a flatbuffers.number_types class), or default when absent."""
        pos = self._field(slot, flags.bytewidth)
        return default if pos is None else flags.py_type(flags.packer_type.unpack_from(self.buf, pos)[0])

    def _follow(self, slot):
        pos = self._field(slot, UOFFSET)
        if pos is None:
            return None
        target = pos + _u32(self.buf, pos)
        if target + UOFFSET > len(self.buf):
            self._fail(f"field {slot} points to byte {target}, outside the {len(self.buf)}-byte buffer")
        return target

    def table(self, slot, what):
        """The sub-table of a field, or None when absent."""
        target = self._follow(slot)
        return None if target is None else FlatTable(self.buf, target, what)

    def _vector(self, slot, width):
        target = self._follow(slot)
        if target is None:
            return None, 0
        count = _u32(self.buf, target)
        start = target + UOFFSET
        if count * width > len(self.buf) - start:
            self._fail(f"vector in field {slot} claims {count} elements of {width} bytes past the buffer's end")
        return start, count

    def numbers(self, slot, dtype):
        """A vector of scalars as a numpy array (empty when absent)."""
        dtype = np.dtype(dtype).newbyteorder("<")
        start, count = self._vector(slot, dtype.itemsize)
        if start is None:
            return np.empty(0, dtype)
        return np.frombuffer(self.buf, dtype, count, start).copy()

    def string(self, slot):
        """A string field decoded as UTF-8, or None when absent."""
        start, count = self._vector(slot, 1)
        if start is None:
            return None
        try:
            return bytes(self.buf[start:start + count]).decode("utf-8")
        except UnicodeDecodeError:
            self._fail(f"string in field {slot} is not UTF-8")

    def strings(self, slot, what):
        """A vector of strings."""
        return [_string_at(self.buf, pos, what) for pos in self._offsets(slot, what)]

    def _offsets(self, slot, what):
        start, count = self._vector(slot, UOFFSET)
        if start is None:
            return []
        return [start + 4 * i + _u32(self.buf, start + 4 * i) for i in range(count)]

    def tables(self, slot, what):
        """A vector of tables (empty when absent)."""
        return [FlatTable(self.buf, pos, f"{what} {i}") for i, pos in enumerate(self._offsets(slot, what))]

    def _union_target(self, type_slot, slot):
        kind = self.scalar(type_slot, N.Uint8Flags)
        if kind == 0:
            return 0, None
        target = self._follow(slot)
        if target is None:
            self._fail(f"union field {slot} has type {kind} but no value")
        return kind, target

    def union(self, type_slot, slot, what):
        """(type id, table) of a union field whose members are tables; (0, None) when absent."""
        kind, target = self._union_target(type_slot, slot)
        return kind, None if target is None else FlatTable(self.buf, target, what)

    def union_struct(self, type_slot, slot, size):
        """(type id, raw bytes) of a union field whose member is a struct of size bytes (stored out of line)."""
        kind, target = self._union_target(type_slot, slot)
        if target is None:
            return 0, None
        if target + size > len(self.buf):
            self._fail(f"struct of {size} bytes at byte {target} runs past the buffer's end")
        return kind, bytes(self.buf[target:target + size])


def _string_at(buf, pos, what):
    if pos + UOFFSET > len(buf):
        raise FlatbufferError(f"{what}: string at byte {pos} lies outside the buffer")
    count = _u32(buf, pos)
    if count > len(buf) - pos - UOFFSET:
        raise FlatbufferError(f"{what}: string at byte {pos} claims {count} bytes past the buffer's end")
    try:
        return bytes(buf[pos + UOFFSET:pos + UOFFSET + count]).decode("utf-8")
    except UnicodeDecodeError:
        raise FlatbufferError(f"{what}: string at byte {pos} is not UTF-8") from None
