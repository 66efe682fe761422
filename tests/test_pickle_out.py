"""Pickles emitted opcode by opcode (ttconv.tt.pickle_out): what Python's own pickle.load builds of them,
what numpy's own pickling of the same array holds, and what ttconv's reader makes of them."""
import io
import pickle
import pickletools

import ml_dtypes
import numpy as np
import pytest

import ttml_support as ts
from ttconv.tt import pickle_out
from test_unpickler import array_values, load_all
from ttconv.tt.unpickler import Record


def array_pickle(array, kind):
    return pickle_out.array_prefix(array.shape, kind) + array.tobytes() + pickle_out.ARRAY_SUFFIX


@pytest.mark.parametrize("kind, dtype", [("FLOAT32", np.float32), ("BFLOAT16", ml_dtypes.bfloat16)])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 3, 5), (4, 1, 40, 33), (1, 1, 300, 300)])
def test_arrays_load_as_numpy_pickles_them(kind, dtype, shape):
    array = (np.arange(np.prod(shape)) * 0.37 - 3).astype(dtype).reshape(shape)
    data = array_pickle(array, kind)
    pickletools.dis(data, out=io.StringIO())  # well-formed opcodes
    got = pickle.loads(data)
    assert got.dtype == array.dtype and got.shape == shape and got.flags.c_contiguous
    assert got.tobytes() == array.tobytes()
    # the same state numpy's own pickle gives
    assert pickle.loads(pickle.dumps(array, protocol=4)).dtype == got.dtype


def test_plain_values_and_instances_load_as_they_were_given():
    value = {"a": [1, 2.5, None, True, False, "x" * 300], "b": (1, 2, 3, 4, 5), "c": {}, "d": [], "e": (),
             "big": 2 ** 40, "neg": -7, "wide": 70000, "unicode": "δ"}
    assert pickle.loads(pickle_out.dumps(value)) == value
    with ts._Modules(ts.HEADER_MODULES) as modules:
        classes = ts._header_classes(modules)
        config = pickle.loads(pickle_out.dumps(pickle_out.Instance(
            "model_builders", "MoEParams", (("n_routed_experts", 64), ("score_func", "softmax")))))
        assert isinstance(config, classes.MoEParams)
        assert (config.n_routed_experts, config.score_func) == (64, "softmax")


def test_ttconvs_reader_reads_them():
    array = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 1, 3, 4)
    header = {"step": 0, "model_config": pickle_out.Instance("model_builders", "ModelConfig", (("num_blocks", 3),))}
    (got_header, got_array), handle = load_all(pickle_out.dumps(header) + array_pickle(array, "FLOAT32"))
    assert got_header["step"] == 0 and isinstance(got_header["model_config"], Record)
    assert got_header["model_config"].fields == {"num_blocks": 3}
    assert array_values(got_array, handle).tobytes() == array.tobytes()


def test_what_it_cannot_write_is_refused():
    with pytest.raises(TypeError, match="cannot pickle a set"):
        pickle_out.dumps({1, 2})
