"""Converted files read back with the C++ msgpack-c library, the way tt-train reads them."""
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
