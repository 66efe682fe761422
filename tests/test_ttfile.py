"""Streaming tt-train file reader and order-checking writer."""
import io

import msgpack
import numpy as np
import pytest

import support
from ttconv.errors import TtFileError
from ttconv.tt import ttfile
from ttconv.tt.ttfile import TtFile, TtWriter, array_header

LLAMA_INIT = f"{support.FIXTURES}/llama-mini/init.msgpack"


def write(tmp_path, data, name="f.msgpack"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_index_matches_msgpack_python(backend):
    tt = TtFile(LLAMA_INIT)
    reference = support.read_tt(LLAMA_INIT)
    assert [e.key for e in tt.entries] == list(reference)
    for entry in tt.entries:
        variant, value = reference[entry.key]
        assert entry.variant == variant
        if isinstance(value, list):
            assert entry.n_elements == len(value)
            np.testing.assert_array_equal(tt.read_values(entry), np.float32(value))


def test_parameters_and_shapes():
    params = TtFile(LLAMA_INIT).parameters()
    assert len(params) == 19
    assert params["llama/llama/fc/weight"].dims == (1, 1, 256, 64)
    assert params["llama/llama/llama_block_0/mlp/w2/weight"].rows == 64


@pytest.mark.parametrize("style", ["msgpack-c", "float64"])
def test_accepts_ints_floats_and_str_shapes(tmp_path, backend, style):
    shapes = {"a/weight": (3, 128), "b/gamma": (1, 128)}
    path = write(tmp_path, support.init_file_bytes(shapes, prefix="p", shape_as="str", float_style=style))
    tt = TtFile(path)
    params = tt.parameters()
    assert params["p/a/weight"].dims == (1, 1, 3, 128)  # dims bytes 0x80 are not valid UTF-8
    reference = support.read_tt(path)
    np.testing.assert_array_equal(tt.read_values(params["p/a/weight"].data),
                                  np.float32(reference["p/a/weight/value/data"][1]))
    np.testing.assert_array_equal(tt.read_values(params["p/b/gamma"].data), np.ones(128, np.float32))


def test_non_numeric_arrays_and_nested_values_are_indexed(tmp_path):
    entries = {"names": [14, ["a", "b"]], "nested": [9, [[1, 2], {"k": None}]], "x": [3, 1.5]}
    tt = TtFile(write(tmp_path, msgpack.packb(entries, use_single_float=True)))
    assert [e.key for e in tt.entries] == ["names", "nested", "x"]
    assert not tt.by_key["names"].numeric and tt.by_key["names"].n_elements == 2


def valid_small():
    return support.init_file_bytes({"w/weight": (2, 20)}, prefix="p", shuffle=False)


MALFORMED = {
    "empty": (b"", "empty"),
    "text": (b"hello world, not msgpack", "expected the map"),
    "array top level": (msgpack.packb([1, 2]), "expected the map"),
    "invalid byte": (b"\x81\xa1k\xc1", "not valid msgpack"),
    "truncated header": (b"\xde\x00", "file ends inside"),
    "truncated entry": (valid_small()[:-7], "file ends inside"),
    "value not a pair": (msgpack.packb({"k": 5}), "not a [variant_index, value] pair"),
    "pair of three": (msgpack.packb({"k": [1, 2, 3]}), "not a [variant_index, value] pair"),
    "negative variant": (msgpack.packb({"k": [-1, 2]}), "variant index"),
    "key not str": (msgpack.packb({5: [1, 2]}), "expected a string"),
    "duplicate key": (b"\x82" + msgpack.packb("k") + msgpack.packb([2, 1]) + msgpack.packb("k")
                      + msgpack.packb([2, 1]), "appears twice"),
    "trailing bytes": (msgpack.packb({"k": [2, 1]}) + b"\x00", "follow the end of the map"),
    "huge array claim": (b"\x81\xa1k\x92\x0a\xdd\xff\xff\xff\xff\xca", "file ends inside"),
    "huge map claim": (b"\xdf\xff\xff\xff\xff\xa1k", "more than the 1,048,576"),
    "map longer than file": (b"\xdf\x00\x0f\xff\xff\xa1k", "file ends inside"),
    "huge str claim": (b"\x81\xdb\xff\xff\xff\xf0abc", "file ends inside"),
    "deep nesting": (b"\x81\xa1k\x92\x09" + b"\x91" * 5000 + b"\x00", "nested more than"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_files_raise_named_errors(tmp_path, backend, name):
    data, message = MALFORMED[name]
    path = write(tmp_path, data)
    with pytest.raises(TtFileError) as err:
        TtFile(path).parameters()
    assert message in str(err.value) and str(path) in str(err.value)


def test_shape_and_data_disagree(tmp_path):
    dims = np.array([1, 1, 2, 3], "<u4").tobytes()
    data = msgpack.packb({"p/w/value/shape": [12, dims], "p/w/value/data": [10, [1.5] * 5]},
                         use_single_float=True)
    with pytest.raises(TtFileError, match="holds 5 values but its shape"):
        TtFile(write(tmp_path, data)).parameters()["p/w"].dims


def test_missing_shape_entry(tmp_path):
    data = msgpack.packb({"p/w/value/data": [10, [1.5] * 5]}, use_single_float=True)
    with pytest.raises(TtFileError, match="has no p/w/value/shape"):
        TtFile(write(tmp_path, data)).parameters()["p/w"].dims


def test_writer_copies_in_order_and_rejects_misuse(tmp_path):
    path = write(tmp_path, valid_small())
    tt = TtFile(path)
    out = io.BytesIO()
    writer = TtWriter(tt.open_source(), out)
    with pytest.raises(RuntimeError, match="begin"):
        writer.copy_entry(tt.entries[0])
    writer.begin()
    with pytest.raises(RuntimeError, match="out of turn"):
        writer.copy_entry(tt.entries[1])
    for entry in tt.entries[:-1]:
        writer.copy_entry(entry)
    with pytest.raises(RuntimeError, match="finish"):
        writer.finish()
    writer.copy_entry(tt.entries[-1])
    writer.finish()
    writer.close()
    assert out.getvalue() == path.read_bytes()


def two_readings(n=20):
    """A map that parses two ways to its end: entries "a" (n values: float32s, a bin8, a float32) and "zz"
    (7), or, taking "a" for n float32 values, "a" and "b" (a bin8 that runs to the end of the file)."""
    def float32(value):
        return b"\xca" + np.float32(value).byteswap().tobytes()

    following = b"\xa2zz" + b"\x92\x00\x07"
    hidden = bytearray(40)
    hidden[3] = 0xCA  # where a float32 array's last value would start; after it, key "b", [0, bin8 ...]
    hidden[8:14] = b"\xa1b\x92\x00\xc4" + bytes([len(hidden) - 14 + 5 + len(following)])
    array = b"".join(float32(i) for i in range(n - 2)) + b"\xc4" + bytes([len(hidden)]) + hidden + float32(1.5)
    return b"\x82\xa1a\x92\x00\xdc" + n.to_bytes(2, "big") + array + following


def test_an_assumed_array_is_confirmed_before_it_is_copied(tmp_path, monkeypatch):
    monkeypatch.setattr(ttfile, "ASSUMED_MIN_VALUES", 16)
    path = write(tmp_path, two_readings())
    assert [e.key for e in TtFile(path).entries] == ["a", "zz"]  # every value scanned
    optimistic = TtFile(path, assume_float32=True)
    assert [e.key for e in optimistic.entries] == ["a", "b"] and optimistic.by_key["a"].assumed
    writer = TtWriter(optimistic.open_source(), io.BytesIO())
    writer.begin()
    with pytest.raises(TtFileError, match="the array of 'a' is not the 20 float32 values .* the file is damaged"):
        writer.copy_entry(optimistic.entries[0])


def test_a_confirmed_array_is_copied_byte_for_byte(tmp_path, monkeypatch):
    # five bytes a value that are not all float32 (an int and a five-byte string): the full index ends
    # the array where the optimistic one does, so the copy is the entry either index sees
    monkeypatch.setattr(ttfile, "ASSUMED_MIN_VALUES", 16)
    values = [float(i) for i in range(20)]
    data = bytearray(msgpack.packb({"a": [0, values], "b": [0, 7]}, use_single_float=True))
    at = data.index(b"\xca" + np.float32(4).byteswap().tobytes())
    data[at:at + 10] = b"\xce\x00\x00\x00\x05" + b"\xa4abcd"  # uint32 5, "abcd"
    path = write(tmp_path, bytes(data))
    tt = TtFile(path, assume_float32=True)
    assert tt.by_key["a"].assumed and not TtFile(path).by_key["a"].numeric
    out = io.BytesIO()
    writer = TtWriter(tt.open_source(), out)
    writer.begin()
    for entry in tt.entries:
        writer.copy_entry(entry)
    writer.finish()
    assert out.getvalue() == path.read_bytes()


def test_writer_counts_values_of_an_open_array(tmp_path):
    tt = TtFile(write(tmp_path, valid_small()))
    writer = TtWriter(tt.open_source(), io.BytesIO())
    writer.begin()
    data = next(e for e in tt.entries if e.key.endswith("/value/data"))
    for entry in tt.entries[: tt.entries.index(data)]:
        writer.copy_entry(entry)
    writer.start_value(data, 40)
    writer.write(b"\xca\x00\x00\x00\x00" * 39)
    with pytest.raises(RuntimeError, match="values of the previous entry"):
        writer.copy_entry(tt.entries[tt.entries.index(data) + 1])
    with pytest.raises(RuntimeError, match="remain"):
        writer.write(b"\xca\x00\x00\x00\x00" * 2)
    writer.close()


@pytest.mark.parametrize("count", [0, 15, 16, 65535, 65536, 2**32 - 1])
def test_array_header_matches_msgpack(count):
    packer = msgpack.Packer()
    assert array_header(count) == packer.pack_array_header(count)
