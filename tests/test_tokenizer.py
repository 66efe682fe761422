"""Tokenizer export (-t) for both commands."""
import json
import os
import shutil

import pytest
from tokenizers import Tokenizer

from support import FIXTURES

LLAMA_MINI = os.path.join(FIXTURES, "llama-mini")
GPT2_MINI = os.path.join(FIXTURES, "gpt2-mini")
TEXTS = ["Hello world", " leading space", "tt-train  tokenizers\nnew line", "ünïcödé 123"]


def test_llama_tokenizer_equals_expected_file(cli, tmp_path):
    out = tmp_path / "deep" / "dir" / "tokenizer.json"
    status, _, err = cli("llama", "-t", out, "--hf_model", LLAMA_MINI)
    assert status == 0, err
    assert out.read_bytes() == open(f"{LLAMA_MINI}/expected/tokenizer.json", "rb").read()


def test_llama_tokenizer_encodes_the_same_and_keeps_leading_space(cli, tmp_path):
    out = tmp_path / "tokenizer.json"
    assert cli("llama", "-t", out, "--hf_model", LLAMA_MINI)[0] == 0
    original = Tokenizer.from_file(f"{LLAMA_MINI}/tokenizer.json")
    exported = Tokenizer.from_file(str(out))
    for text in TEXTS:
        ids = original.encode(text).ids
        assert exported.encode(text).ids == ids
        assert exported.decode(ids) == " " + original.decode(ids)
    assert all(isinstance(m, str) for m in json.load(open(out))["model"]["merges"])
    assert "ignore_merges" not in json.load(open(out))["model"]


def test_llama_merges_already_strings_stay(cli, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(LLAMA_MINI, model)
    data = json.load(open(model / "tokenizer.json"))
    data["model"]["merges"] = [" ".join(m) for m in data["model"]["merges"]]
    (model / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    out = tmp_path / "tok.json"
    assert cli("llama", "-t", out, "--hf_model", model)[0] == 0
    assert out.read_bytes() == open(f"{LLAMA_MINI}/expected/tokenizer.json", "rb").read()


def test_t_alone_writes_only_the_tokenizer(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli("llama", "-t", "tok.json", "--hf_model", LLAMA_MINI)
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == ["tok.json"]


def test_t_with_input_and_output_does_both(cli, tmp_path):
    status, _, err = cli("llama", "-t", tmp_path / "tok.json", "-i", f"{LLAMA_MINI}/init.msgpack",
                         "-o", tmp_path / "out.msgpack", "--hf_model", LLAMA_MINI)
    assert status == 0, err
    assert (tmp_path / "tok.json").exists() and (tmp_path / "out.msgpack").exists()


def test_gpt2_tokenizer_json_unchanged(cli, tmp_path):
    out = tmp_path / "tok.json"
    status, _, err = cli("gpt2", "-t", out, "--hf_model", GPT2_MINI)
    assert status == 0, err
    assert out.read_bytes() == open(f"{GPT2_MINI}/expected/tokenizer.json", "rb").read()


def test_gpt2_tokenizer_built_from_vocab_and_merges(cli, tmp_path):
    data = json.load(open(f"{GPT2_MINI}/tokenizer.json"))
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(f"{GPT2_MINI}/config.json", model)
    (model / "vocab.json").write_text(json.dumps(data["model"]["vocab"], ensure_ascii=False))
    merges = "\n".join(" ".join(m) for m in data["model"]["merges"])
    (model / "merges.txt").write_text("#version: 0.2\n" + merges + "\n")
    out = tmp_path / "tok.json"
    status, _, err = cli("gpt2", "-t", out, "--hf_model", model)
    assert status == 0, err
    reference = Tokenizer.from_file(f"{GPT2_MINI}/tokenizer.json")
    built = Tokenizer.from_file(str(out))
    for text in TEXTS + ["<|endoftext|> after"]:
        ids = reference.encode(text).ids
        assert built.encode(text).ids == ids
        assert built.decode(ids) == reference.decode(ids)


@pytest.mark.parametrize("family,model", [("llama", LLAMA_MINI), ("gpt2", GPT2_MINI)])
def test_missing_tokenizer_is_one_clear_line(cli, tmp_path, family, model):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(f"{model}/config.json", folder)
    shutil.copy(f"{model}/model.safetensors", folder)
    status, _, err = cli(family, "-t", tmp_path / "tok.json", "--hf_model", folder)
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("ttconv: error: ") and "tokenizer" in err
    assert not (tmp_path / "tok.json").exists()


def test_broken_tokenizer_json_is_one_clear_line(cli, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(LLAMA_MINI, folder)
    (folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 5}}')
    status, _, err = cli("llama", "-t", tmp_path / "tok.json", "--hf_model", folder)
    assert status == 1 and "not a usable tokenizer" in err and err.count("\n") == 1
