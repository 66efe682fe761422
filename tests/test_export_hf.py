"""to-hf: tt-train file back to a Hugging Face checkpoint; round trips are bit-exact."""
import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

import support


def roundtrip(cli, tmp_path, family, cfg, tensors, shapes, prefix, dtype="F32", extra=()):
    support.write_checkpoint(tmp_path / "ckpt", cfg, tensors, dtype=dtype)
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(shapes, prefix=prefix))
    tt = tmp_path / "tt.msgpack"
    assert cli(family, "-i", init, "-o", tt, "--hf_model", tmp_path / "ckpt")[0] == 0
    status, _, err = cli("to-hf", family, "-i", tt, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf", *extra)
    assert status == 0, err
    count = len(load_file(str(tmp_path / "ckpt" / "model.safetensors")))
    assert err.startswith(f"ttconv: wrote {tmp_path / 'hf'}: {count} tensors, ")
    return load_file(str(tmp_path / "ckpt" / "model.safetensors")), load_file(str(tmp_path / "hf" / "model.safetensors"))


def assert_same(original, exported):
    assert sorted(original) == sorted(exported)
    for name in original:
        assert exported[name].dtype == original[name].dtype, name
        assert exported[name].shape == original[name].shape, name
        assert exported[name].tobytes() == original[name].tobytes(), name


@pytest.mark.parametrize("tie,tied_tt,vocab", [(False, False, 96), (True, True, 70), (True, False, 90)])
def test_llama_roundtrip_is_bit_exact(cli, tmp_path, backend, tie, tied_tt, vocab):
    cfg = support.llama_config(vocab=vocab, tie=tie)
    original, exported = roundtrip(cli, tmp_path, "llama", cfg, support.llama_tensors(cfg, tie=tie),
                                   support.llama_tt_shapes(cfg, 96, tied=tied_tt), "llama/llama")
    assert_same(original, exported)
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    assert json.load(open(tmp_path / "hf" / "config.json"))["vocab_size"] == vocab


def test_gpt2_roundtrip_with_crop_and_mask_buffers(cli, tmp_path, backend):
    cfg = support.gpt2_config(positions=48)
    tensors = support.gpt2_tensors(cfg, prefix="", mask_buffers=True)
    original, exported = roundtrip(cli, tmp_path, "gpt2", cfg, tensors, support.gpt2_tt_shapes(cfg, 128, 32),
                                   "transformer/transformer")
    assert_same(original, exported)


def test_finetuned_values_come_back(cli, tmp_path):
    cfg = support.gpt2_config()
    support.write_checkpoint(tmp_path / "ckpt", cfg, support.gpt2_tensors(cfg))
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(support.gpt2_tt_shapes(cfg, 128, 48), prefix="transformer/transformer"))
    status, _, err = cli("to-hf", "gpt2", "-i", init, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf")
    assert status == 0, err
    tt = support.read_tt(init)
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    qkv = support.tt_tensor(tt, "transformer/transformer", "gpt_block_1/attention/qkv_linear/weight")
    np.testing.assert_array_equal(exported["transformer.h.1.attn.c_attn.weight"], qkv.T)
    fc = support.tt_tensor(tt, "transformer/transformer", "fc/weight")
    np.testing.assert_array_equal(exported["transformer.wte.weight"], fc[:100])


def raw_safetensors(path):
    """{name: (dtype string, shape, raw bytes)} straight from the file layout (header length, JSON, data),
    independent of safetensors' own dtype support."""
    data = open(path, "rb").read()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    body = data[8 + size:]
    return {name: (info["dtype"], info["shape"], body[info["data_offsets"][0]:info["data_offsets"][1]])
            for name, info in header.items()}


@pytest.mark.parametrize("dtype,np_dtype,name,code", [("bf16", ml_dtypes.bfloat16, "bfloat16", "BF16"),
                                                     ("f16", np.float16, "float16", "F16")])
def test_half_precision_output_rounds_to_nearest_even(cli, tmp_path, dtype, np_dtype, name, code):
    cfg = support.llama_config(torch_dtype="float32")
    support.write_checkpoint(tmp_path / "ckpt", cfg, support.llama_tensors(cfg))
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(support.llama_tt_shapes(cfg, 96)))
    assert cli("llama", "-i", init, "-o", tmp_path / "tt", "--hf_model", tmp_path / "ckpt")[0] == 0
    status, _, err = cli("to-hf", "llama", "-i", tmp_path / "tt", "--hf_model", tmp_path / "ckpt",
                         "-o", tmp_path / "hf", "--dtype", dtype)
    assert status == 0, err
    original = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    exported = raw_safetensors(tmp_path / "hf" / "model.safetensors")
    assert sorted(exported) == sorted(original)
    for key, value in original.items():
        assert exported[key][:2] == (code, list(value.shape)), key
        assert exported[key][2] == value.astype(np_dtype).tobytes(), key
    assert json.load(open(tmp_path / "hf" / "config.json"))["torch_dtype"] == name


def test_to_hf_into_the_original_folder_is_refused(cli, tmp_path, fixture_copy):
    model = fixture_copy("llama-mini")
    before = (model / "model.safetensors").read_bytes()
    status, _, err = cli("to-hf", "llama", "-i", model / "init.msgpack", "--hf_model", model, "-o", model)
    assert status == 1 and "original checkpoint folder" in err
    assert (model / "model.safetensors").read_bytes() == before
