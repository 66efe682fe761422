"""inspect on init files, ttconv output and upstream float64 output."""
import json

import pytest

import support

FILES = {
    "init": f"{support.FIXTURES}/llama-mini/init.msgpack",
    "upstream": f"{support.FIXTURES}/gpt2-mini/expected/reference.msgpack",
}


@pytest.mark.parametrize("which", sorted(FILES))
def test_json_lists_every_parameter(cli, which):
    path = FILES[which]
    status, out, _ = cli("inspect", path, "--json")
    assert status == 0
    info = json.loads(out)
    reference = support.read_tt(path)
    data_keys = [k for k in reference if k.endswith("/value/data")]
    assert info["total_parameters"] == len(data_keys)
    assert info["total_elements"] == sum(len(reference[k][1]) for k in data_keys)
    for row in info["parameters"]:
        shape = reference[row["name"] + "/value/shape"][1]
        assert row["shape"] == [int.from_bytes(shape[i:i + 4], "little") for i in range(0, len(shape), 4)]
        assert row["variant"] == reference[row["name"] + "/value/data"][0]
        assert row["requires_grads"] is reference[row["name"] + "/requires_grads"][1]
    encodings = {row["encoding"] for row in info["parameters"]}
    assert encodings == ({"f64"} if which == "upstream" else {"int", "f32"})


def test_table_on_converted_output(cli, tmp_path):
    model = f"{support.FIXTURES}/llama-mini"
    out = tmp_path / "o.msgpack"
    assert cli("llama", "-i", f"{model}/init.msgpack", "-o", out, "--hf_model", model)[0] == 0
    status, text, _ = cli("inspect", out)
    assert status == 0
    line = next(l for l in text.splitlines() if l.startswith("llama/llama/fc/weight "))
    assert "1x1x256x64" in line and "16,384" in line and "f32" in line
    assert text.splitlines()[-1].startswith("19 parameters, 119,104 values")


def test_inspect_bad_file_is_one_line(cli, tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x93\x01\x02\x03")
    status, _, err = cli("inspect", path)
    assert status == 1 and err.startswith("ttconv: error:") and err.count("\n") == 1
