"""Fuzzing the readers (msgpack files, safetensors, checkpoint directories, ttml pickles): every input parses or raises ttconv's own error class.
The init-file reader runs on both backends (their number scanners differ).

TTCONV_FUZZ_EXAMPLES raises the number of examples for a longer local run."""
import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import support
import ttml_support
import ttdir_support
from ttconv import families
from ttconv.hf.checkpoint import Checkpoint, read_safetensors_header
from ttconv.errors import CheckpointError, TtFileError
from ttconv.tt import tensorbin
from ttconv.tt.ttdir import TtDir
from ttconv.tt.ttfile import TtFile
from ttconv.tt.ttml import TtmlFile

EXAMPLES = int(os.environ.get("TTCONV_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

SEED_INIT = support.init_file_bytes({"w/weight": (3, 5), "g/gamma": (1, 5)}, prefix="p", seed=4)
_tmp = tempfile.mkdtemp(prefix="ttconv-fuzz-")
support.write_checkpoint(_tmp, {}, {"a": np.arange(12, dtype=np.float32).reshape(3, 4),
                                    "b": np.ones(5, np.float32)}, dtype="BF16")
SEED_SAFETENSORS = open(os.path.join(_tmp, "model.safetensors"), "rb").read()
_seed_dir = ttdir_support.write_dir(os.path.join(_tmp, "seed-dir"), {
    "m/w": np.arange(40 * 70, dtype=np.float32).reshape(1, 1, 40, 70),
    "m/g": np.ones((1, 1, 1, 5), np.float32)}, scalars=[("AdamW/steps", "SizeTValue", 3)])
SEED_METADATA = open(os.path.join(_seed_dir, "metadata.flatbuffer"), "rb").read()
SEED_TENSOR = open(os.path.join(_seed_dir, "m_w_value.tensorbin"), "rb").read()
SEED_SHARDED = ttdir_support.tensorbin_bytes(
    np.zeros((1, 1, 64, 64), np.float32), shards=[((0, i), np.ones((1, 1, 64, 32), np.float32)) for i in range(2)],
    distribution=[2], placements=[(1, 3)], identifier=True, version=1)

_ttml_model = {"Llama/tok_emb/weight": np.arange(64 * 8, dtype=np.float32).reshape(1, 1, 64, 8),
               "Llama/blocks/0/attention/qkv_linear/weight": np.ones((1, 1, 16, 8), np.float32),
               "Llama/blocks/0/attention/out_linear/weight": np.ones((1, 1, 8, 8), np.float32)}
SEED_TTML = {protocol: open(ttml_support.write_stream(
    os.path.join(_tmp, f"seed-{protocol}.pkl"), _ttml_model, ttml_support.adamw_state(_ttml_model),
    header={"step": 3, "cfg": {"n": [1, 2.5, None]}}, protocol=protocol), "rb").read() for protocol in (2, 5)}


@st.composite
def mutated(draw, seed):
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\xdd\xff\xff\xff", b"\xdf\x00\x00\xff",
                                                      b"\xdb\x7f\xff\xff", b"\x00\x00\x00\x00"]))
    return bytes(data)


def write(data, name):
    path = os.path.join(_tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def read_init(data):
    try:
        tt = TtFile(write(data, "init.msgpack"))
        for param in tt.parameters().values():
            assert param.rows * param.cols == param.data.n_elements
            tt.read_values(param.data)
    except TtFileError:
        pass


def read_checkpoint(data):
    write(data, "model.safetensors")
    try:
        ckpt = Checkpoint(_tmp)
        for info in ckpt.tensors.values():
            ckpt.read_rows(info)
        ckpt.close()
    except CheckpointError:
        pass


@FUZZ
@given(data=mutated(SEED_INIT))
def test_init_reader_mutations(backend, data):
    read_init(data)


@FUZZ
@given(data=st.binary(max_size=200))
def test_init_reader_random_bytes(backend, data):
    read_init(data)


@FUZZ
@given(mutated(SEED_SAFETENSORS))
def test_checkpoint_reader_mutations(data):
    read_checkpoint(data)


@FUZZ
@given(st.binary(max_size=200))
def test_safetensors_header_random_bytes(data):
    try:
        read_safetensors_header(write(data, "random.safetensors"))
    except CheckpointError:
        pass


def read_dir(metadata=SEED_METADATA, tensor=SEED_TENSOR):
    directory = os.path.join(_tmp, "fuzz-dir")
    os.makedirs(directory, exist_ok=True)
    write(metadata, "fuzz-dir/metadata.flatbuffer")
    write(tensor, "fuzz-dir/m_w_value.tensorbin")
    with open(os.path.join(_seed_dir, "m_g_value.tensorbin"), "rb") as f:
        write(f.read(), "fuzz-dir/m_g_value.tensorbin")
    try:
        ttdir = TtDir(directory)
        for param in ttdir.parameters().values():
            assert ttdir.read_values(param.data).size == param.rows * param.cols
    except TtFileError:
        pass


@FUZZ
@given(mutated(SEED_METADATA))
def test_metadata_mutations(data):
    read_dir(metadata=data)


@FUZZ
@given(st.binary(max_size=200))
def test_metadata_random_bytes(data):
    read_dir(metadata=data)


@FUZZ
@given(mutated(SEED_TENSOR[:512]))
def test_tensor_header_mutations(data):
    read_dir(tensor=data + SEED_TENSOR[512:])


@FUZZ
@given(mutated(SEED_SHARDED))
def test_sharded_tensor_mutations(data):
    try:
        header = tensorbin.read_header(write(data, "sharded.tensorbin"))
        assert tensorbin.read_tensor(header).size == np.prod(header.logical_shape())
    except TtFileError:
        pass


def read_ttml(data):
    try:
        tt = TtmlFile(write(data, "fuzz.pkl"), families.ttml_models())
        for param in tt.weights().values():
            assert tt.read_values(param.data).size == param.rows * param.cols
    except TtFileError:
        pass


@FUZZ
@given(mutated(SEED_TTML[2]))
def test_ttml_protocol_2_mutations(data):
    read_ttml(data)


@FUZZ
@given(mutated(SEED_TTML[5]))
def test_ttml_protocol_5_mutations(data):
    read_ttml(data)


@FUZZ
@given(st.binary(max_size=200).map(lambda tail: b"\x80\x04" + tail))
def test_ttml_random_opcodes(data):
    read_ttml(data)


def test_seeds_are_valid():
    for data in SEED_TTML.values():
        # q, kv from the fused qkv; tied fc
        assert len(TtmlFile(write(data, "seed.pkl"), families.ttml_models()).weights()) == 5
    assert len(TtDir(_seed_dir).parameters()) == 2
    assert len(TtFile(write(SEED_INIT, "seed.msgpack")).parameters()) == 2
    assert sorted(read_safetensors_header(write(SEED_SAFETENSORS, "seed.safetensors"))) == ["a", "b"]
