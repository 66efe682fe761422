"""Converted files read back with the C++ msgpack-c library, the way tt-train reads them."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

import support

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "msgpack_c_reader.cpp")


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    if not os.path.exists("/usr/include/msgpack.hpp") or shutil.which("g++") is None:
        pytest.skip("msgpack-c headers (Debian libmsgpack-cxx-dev) or g++ missing; .ci/run installs them")
    binary = tmp_path_factory.mktemp("msgpack-c") / "reader"
    subprocess.run(["g++", "-std=c++17", "-O1", "-DMSGPACK_NO_BOOST", SOURCE, "-o",
                    str(binary)], check=True)
    return binary


def read_with_msgpack_c(reader, path):
    result = subprocess.run([str(reader), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = {}
    for line in result.stdout.splitlines():
        key, index, value = line.split("\t")
        entries[key] = (int(index), value)
    return entries


def check(reader, out_path, expected):
    seen = read_with_msgpack_c(reader, out_path)
    assert list(seen) == list(support.read_tt(out_path))
    for key, want in expected.items():
        index, value = seen[key]
        assert index == 10
        fields = value.split()
        assert int(fields[0]) == want.size
        got = np.array([int(h, 16) for h in fields[1:]], dtype=np.uint32).view(np.float32)
        np.testing.assert_array_equal(got, want.reshape(-1), key)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fixture_outputs_read_by_msgpack_c(reader, tmp_path, cli, family):
    mini = os.path.join(support.FIXTURES, f"{family}-mini")
    out = tmp_path / "out.msgpack"
    assert cli(family, "-i", f"{mini}/init.msgpack", "-o", out, "--hf_model", mini)[0] == 0
    upstream = support.read_tt(f"{mini}/expected/reference.msgpack")
    expected = {k: np.float64(v[1]).astype(np.float32) for k, v in upstream.items() if k.endswith("/value/data")}
    check(reader, out, expected)


def test_padded_bf16_output_read_by_msgpack_c(reader, tmp_path, cli):
    cfg = support.llama_config(vocab=77)
    stored = support.write_checkpoint(tmp_path / "ckpt", cfg, support.llama_tensors(cfg), dtype="BF16", shards=2)
    shapes = support.llama_tt_shapes(cfg, 96)
    (tmp_path / "init.msgpack").write_bytes(support.init_file_bytes(shapes))
    out = tmp_path / "out.msgpack"
    assert cli("llama", "-i", tmp_path / "init.msgpack", "-o", out, "--hf_model", tmp_path / "ckpt")[0] == 0
    reference = support.expected_llama(cfg, stored, shapes)
    check(reader, out, {f"llama/llama/{n}/value/data": w for n, w in reference.items()})


# The C++ type of each variant index as tt-train's MsgPackFile asks for it (get<T> demands the index).
TRAINING_VARIANTS = {"adamw/steps": 6, "scheduler/m_last_lr": 3, "scheduler/m_current_step_in_scheduler": 2,
                     "scheduler/m_current_scheduler_index": 6, "scheduler/current_scheduler/m_last_step": 6,
                     "scheduler/current_scheduler/m_last_lr": 3}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_built_training_file_read_by_msgpack_c(reader, tmp_path, cli, family):
    mini = os.path.join(support.FIXTURES, f"{family}-mini")
    out = tmp_path / "built.msgpack"
    status, _, err = cli(family, "--no-init", "-o", out, "--hf_model", mini, "--scheduler", "warmup_linear",
                         "--learning-rate", "0.001")
    assert status == 0, err
    seen = read_with_msgpack_c(reader, out)
    assert sorted(seen) == sorted(support.read_tt(out))
    for key, index in TRAINING_VARIANTS.items():
        assert seen[key][0] == index, key
    assert seen["adamw/steps"][1] == "0" and float(seen["scheduler/m_last_lr"][1]) == pytest.approx(0.001)
    for key, (index, value) in seen.items():
        if key.endswith("/value/data"):
            assert index == 10
            if key.startswith("adamw/"):
                assert set(value.split()[1:]) == {"00000000"}, key
        elif key.endswith(("/requires_grads", "/has_grads")):
            assert index == 0 and value == ("1" if key.endswith("/requires_grads") and not key.startswith("adamw/")
                                            else "0"), key
        elif key.endswith("/value/shape"):
            assert index == 12 and value.split()[0] == "16", key


def test_reset_training_save_read_by_msgpack_c(reader, tmp_path, cli):
    mini = os.path.join(support.FIXTURES, "llama-mini")
    with open(os.path.join(mini, "config.json")) as f:
        shapes = support.llama_tt_shapes(json.load(f), 256)
    save = tmp_path / "save.msgpack"
    save.write_bytes(support.init_file_bytes(shapes, prefix="transformer/llama", extra_entries=(
        support.training_state_entries(shapes, "llama", steps=40, moments="random"))))
    out = tmp_path / "out.msgpack"
    assert cli("llama", "-i", save, "-o", out, "--hf_model", mini, "--prefix", "llama/llama")[0] == 0
    seen = read_with_msgpack_c(reader, out)
    assert seen["adamw/steps"] == (6, "0") and seen["scheduler/m_last_step"] == (6, "0")
    assert "llama/llama/fc/weight/value/data" in seen and not any(k.startswith("transformer/") for k in seen)
