"""Safetensors and checkpoint-folder reading, including broken and hostile files."""
import json
import struct

import numpy as np
import pytest

import support
from ttconv.hf.checkpoint import Checkpoint, read_safetensors_header
from ttconv.errors import CheckpointError


def safetensors_bytes(header, data=b""):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def write(tmp_path, data, name="model.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reads_rows_of_every_dtype(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((10, 6)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}
    for dtype in ("F32", "F16", "BF16"):
        folder = tmp_path / dtype
        stored = support.write_checkpoint(folder, {"model_type": "llama"}, tensors, dtype=dtype)
        ckpt = Checkpoint(folder)
        a = ckpt.tensors["a"]
        assert a.dtype == dtype and a.shape == (10, 6)
        rows = ckpt.read_rows(a, 3, 7)
        as_f32 = rows.view(np.uint16).astype(np.uint32) << 16 if dtype == "BF16" else rows.astype(np.float32)
        np.testing.assert_array_equal(as_f32.view(np.float32) if dtype == "BF16" else as_f32, stored["a"][3:7])
        assert ckpt.read_rows(ckpt.tensors["b"]).shape == (1, 7)
        ckpt.close()


def test_sharded_checkpoint(tmp_path):
    tensors = {f"t{i}": np.full((2, 3), i, np.float32) for i in range(5)}
    support.write_checkpoint(tmp_path, {}, tensors, shards=3)
    ckpt = Checkpoint(tmp_path)
    assert sorted(ckpt.tensors) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(ckpt.read_rows(ckpt.tensors[name]), value)


GOOD = {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}

BROKEN = {
    "too short": (b"\x01\x00", "too short"),
    "header longer than file": (struct.pack("<Q", 1000) + b"{}", "header claims 1000 bytes"),
    "absurd header": (struct.pack("<Q", 2**63) + b"{}", "header claims"),
    "not json": (struct.pack("<Q", 4) + b"\xff\xfe{]", "not valid JSON"),
    "json list": (safetensors_bytes([1, 2]), "expected an object"),
    "deep json": (struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    "unknown dtype": (safetensors_bytes({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
                      "unknown dtype"),
    "bad shape": (safetensors_bytes({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
                  "not a list of non-negative"),
    "offsets outside": (safetensors_bytes(GOOD, b"\0" * 8), "lie outside"),
    "size mismatch": (safetensors_bytes({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
                      "expected 12"),
    "overlap": (safetensors_bytes({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                   "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
                "overlap"),
    "bad offsets": (safetensors_bytes({"x": {"dtype": "F32", "shape": [1], "data_offsets": "0-4"}}, b"\0" * 4),
                    "not [begin, end]"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_safetensors(tmp_path, name):
    data, message = BROKEN[name]
    path = write(tmp_path, data)
    with pytest.raises(CheckpointError) as err:
        read_safetensors_header(str(path))
    assert message in str(err.value) and str(path) in str(err.value)


def test_truncated_real_file(tmp_path):
    support.write_checkpoint(tmp_path, {}, {"w": np.ones((100, 10), np.float32)})
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="lie outside"):
        Checkpoint(tmp_path)


def test_unsupported_dtype_named_when_read(tmp_path):
    path = write(tmp_path, safetensors_bytes({"x": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8))
    (tmp_path / "config.json").write_text("{}")
    ckpt = Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="tensor x is F64; ttconv converts F32, F16 and BF16 only"):
        ckpt.read_rows(ckpt.tensors["x"])
    assert path.exists()


def test_index_naming_missing_shard_or_tensor(tmp_path):
    support.write_checkpoint(tmp_path, {}, {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}, shards=2)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="maps ghost to model-00001-of-00002.safetensors, which has no such"):
        Checkpoint(tmp_path)
    data["weight_map"]["ghost"] = "model-00009-of-00009.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="names shard model-00009-of-00009.safetensors, which is missing"):
        Checkpoint(tmp_path)
    data["weight_map"]["ghost"] = "../../etc/passwd"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        Checkpoint(tmp_path)


def test_pickled_weights_only(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(CheckpointError, match="safetensors only and never unpickles"):
        Checkpoint(tmp_path)


@pytest.mark.parametrize("config,message", [
    (None, "config.json not found"),
    ("{not json", "not valid JSON"),
    ("[1]", "expected a JSON object"),
])
def test_config_problems(tmp_path, config, message):
    support.write_checkpoint(tmp_path, {}, {"w": np.ones(2, np.float32)})
    if config is None:
        (tmp_path / "config.json").unlink()
    else:
        (tmp_path / "config.json").write_text(config)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(tmp_path)


def test_config_int_checks(tmp_path):
    support.write_checkpoint(tmp_path, {"hidden_size": "64", "n": 3}, {"w": np.ones(2, np.float32)})
    ckpt = Checkpoint(tmp_path)
    assert ckpt.config_int("n") == 3
    with pytest.raises(CheckpointError, match="'hidden_size' is '64', expected a positive integer"):
        ckpt.config_int("hidden_size")
    with pytest.raises(CheckpointError, match="missing 'vocab_size'"):
        ckpt.config_int("vocab_size")


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpoint(tmp_path / "nope")
