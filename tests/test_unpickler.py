"""The pickle reader that runs nothing: arrays of every protocol and numpy module path, header
classes that do not exist here, and hostile pickles (which would leave a marker file if run)."""
import io
import os
import pickle
import subprocess

import ml_dtypes
import numpy as np
import pytest

import ttml_support
from ttconv.errors import TtFileError
from ttconv.tt.unpickler import LARGE, Array, Blob, Record, Unpickler, read_blob


NUMPY_1 = np.lib.NumpyVersion(np.__version__) < "2.0.0"  # numpy 1.x writes numpy.core itself


def load_all(data, path="mem.pkl"):
    handle = io.BytesIO(data)
    reader = Unpickler(handle, path, len(data))
    values = []
    while not reader.at_end():
        values.append(reader.load())
    return values, handle


def array_values(array, handle):
    data = read_blob(handle, "mem.pkl", array.data) if isinstance(array.data, Blob) else array.data
    return np.frombuffer(data, dtype=array.dtype).reshape(array.shape, order="F" if array.fortran else "C")


def dumps(value, protocol, numpy1=False):
    handle = io.BytesIO()
    ttml_support._dump(value, handle, protocol, numpy1)
    return handle.getvalue()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("numpy1", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("rows", [3, 300])  # 300 x 64 values: past LARGE, left in the file as a Blob
def test_arrays_of_every_protocol_and_numpy_path(protocol, numpy1, dtype, rows):
    rng = np.random.default_rng(rows)
    array = rng.normal(size=(1, 1, rows, 64)).astype(dtype)
    data = dumps(array, protocol, numpy1)
    named = b"numpy.core." if numpy1 or NUMPY_1 else b"numpy._core."
    assert named in data and (b"numpy._core." in data) == (named == b"numpy._core.")
    (value,), handle = load_all(data)
    assert isinstance(value, Array) and value.shape == array.shape
    assert value.dtype_name == array.dtype.name and value.bfloat16 == (array.dtype.name == "bfloat16")
    assert value.dtype.itemsize == array.dtype.itemsize and value.nbytes == array.nbytes
    assert isinstance(value.data, Blob) == (array.nbytes >= LARGE)
    assert array_values(value, handle).tobytes() == array.tobytes()


def test_protocol_5_reduces_to_frombuffer_and_fortran_order_is_kept():
    array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    data = dumps(array, 5)
    assert b"_frombuffer" in data
    (value,), handle = load_all(data)
    assert np.array_equal(array_values(value, handle), array)


def test_plain_containers_and_scalars():
    value = {"a": [1, 2.5, None, True], "b": (b"xy", "z"), "c": {1, 2}, "d": frozenset({3}), "e": -(2 ** 70),
             "f": np.float32(1.5)}
    for protocol in (2, 4, 5):
        (got,), _ = load_all(pickle.dumps(value, protocol=protocol))
        assert got == value


def test_a_bfloat16_scalar_reads_as_its_float32_value():
    for protocol in (2, 4, 5):
        (got,), _ = load_all(pickle.dumps(ml_dtypes.bfloat16(-2.375), protocol=protocol))
        assert got.dtype == np.float32 and got == np.float32(-2.375)


def test_header_classes_that_do_not_exist_become_records():
    with ttml_support._Modules(ttml_support.HEADER_MODULES) as modules:
        classes = ttml_support._header_classes(modules)
        cfg = {"num_key_value_heads": 2, "rope_theta": 1e4, "intermediate_size": 128, "vocab_size": 99,
               "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 128}
        header = {"model_config": ttml_support.model_config(classes, "llama", cfg, True),
                  "tokenizer": classes.CharTokenizer("ab")}
        data = pickle.dumps(header, protocol=4)
    (got,), _ = load_all(data)
    config = got["model_config"]
    assert isinstance(config, Record) and str(config.cls) == "model_builders.ModelConfig"
    assert config.fields["vocab_size"] == 99 and config.fields["spec"].fields["num_groups"] == 2
    assert str(config.fields["weight_tying"].cls) == "_ttml.models.WeightTyingType"
    assert config.fields["weight_tying"].args == (1,)
    assert got["tokenizer"].fields["stoi"] == {"<PAD>": 0, "a": 1, "b": 2, "<BEG>": 3, "<END>": 4}


def test_private_header_classes_as_model_builders_names_them_are_records():
    with ttml_support._Modules(ttml_support.HEADER_MODULES) as modules:
        classes = ttml_support._header_classes(modules)
        data = pickle.dumps({"spec": classes.DeepSeekSpec(n_routed_experts=16)}, protocol=4)
    (got,), _ = load_all(data)
    assert str(got["spec"].cls) == "model_builders._DeepSeekSpec"
    assert got["spec"].fields["n_routed_experts"] == 16


class _Payload:
    """Pickles as a call of target(*args): what a hostile checkpoint holds."""

    def __init__(self, target, *args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def hostile_pickles(marker):
    command = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, command),
        "subprocess": _Payload(subprocess.check_call, ["touch", str(marker)]),
        "Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "eval": _Payload(eval, f"open({str(marker)!r}, 'w')"),
        "exec": _Payload(exec, f"open({str(marker)!r}, 'w')"),
        "getattr": _Payload(getattr, "text", "upper"),
        "numpy function": _Payload(np.save, str(marker), np.zeros(1)),
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_hostile_pickles_are_refused_naming_what_they_call(tmp_path, protocol):
    marker = tmp_path / "ran"
    for label, payload in hostile_pickles(marker).items():
        for wrapped in (payload, {"header": {"x": [payload]}}):
            with pytest.raises(TtFileError, match="refuses") as info:
                load_all(pickle.dumps(wrapped, protocol=protocol))
            assert "\n" not in str(info.value)
            name = {"os.system": "system", "subprocess": "check_call", "Popen": "Popen", "eval": "eval",
                    "exec": "exec", "getattr": "getattr", "numpy function": "save"}[label]
            assert name in str(info.value), (label, str(info.value))
    assert not marker.exists()


@pytest.mark.parametrize("data,what", [
    (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.", "os.system"),          # GLOBAL + REDUCE by hand
    (b"(cos\nsystem\nX\x04\x00\x00\x00trueo.", "os.system"),                 # OBJ (protocol 1), refused at import
    (b"(X\x01\x00\x00\x00xi__main__\nThing\n.", "INST"),                     # INST (protocol 0)
    (b"\x80\x02\x82\x01.", "EXT1"),                                          # extension registry
    (b"\x80\x02X\x01\x00\x00\x00xQ.", "BINPERSID"),                          # persistent id
    (b"\x80\x05\x97.", "NEXT_BUFFER"),                                       # out-of-band buffer
    (b"\x80\x02cbuiltins\n__import__\nX\x02\x00\x00\x00os\x85R.", "__import__"),
    (b"\x80\x02cnumpy\nload\nX\x01\x00\x00\x00f\x85R.", "numpy.load"),
    (b"\x80\x02cmy_lab.recipes\nConfig\n)R\x8c\x01x\x8c\x01y\x86b.", "state of my_lab.recipes.Config"),
])
def test_crafted_opcodes_are_refused(data, what):
    with pytest.raises(TtFileError) as info:
        load_all(data)
    assert what in str(info.value) or what.split(".")[-1] in str(info.value)


def test_calling_a_class_that_is_not_here_builds_an_inert_record():
    (value,), _ = load_all(b"\x80\x02cmy_lab.recipes\nConfig\nK\x05\x85R}X\x01\x00\x00\x00aK\x01sb.")
    assert isinstance(value, Record) and value.args == (5,) and value.fields == {"a": 1}


@pytest.mark.parametrize("data,message", [
    (pickle.dumps(np.zeros(4, np.float32), protocol=4)[:-30], "truncated"),
    (b"\x80\x04B\xff\xff\xff\x00.", "declares"),
    (b"\x80\x09N.", "protocol 9"),
    (b"\x80\x02h\x05.", "memo 5"),
    (b"\x80\x02K\x01K\x02.", "left on the stack"),
    (b"\x80\x02}]K\x01s.", "unhashable"),
    (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.", "dtype"),
])
def test_malformed_pickles_end_in_one_error(data, message):
    with pytest.raises(TtFileError, match=message):
        load_all(data)


def test_an_array_larger_than_its_data_is_refused():
    data = pickle.dumps(np.zeros((4, 4), np.float32), protocol=4)
    # the shape tuple (4, 4) -> (4, 5): the array now declares 80 bytes over 64 of data
    patched = data.replace(b"K\x04K\x04\x86", b"K\x04K\x05\x86")
    assert patched != data
    with pytest.raises(TtFileError, match="declares 80 bytes but its data holds 64"):
        load_all(patched)
