"""to-hf: tt-train file back to a Hugging Face checkpoint; round trips are bit-exact."""
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import support
from ttconv import output
from ttconv.hf import safetensors_out
from ttconv.tt import rows, ttfile


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


# ---------------------------------------------------------------- shards, index, options

# transformers' LlamaForCausalLM module order (its state dict's), written out independently of ttconv
LLAMA_LAYER_ORDER = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
                     "input_layernorm.weight", "post_attention_layernorm.weight")


def llama_state_dict_order(cfg, tied):
    names = ["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        names += [f"model.layers.{i}.{n}" for n in LLAMA_LAYER_ORDER]
    return names + ["model.norm.weight"] + ([] if tied else ["lm_head.weight"])


def greedy_shards(sizes, limit):
    """save_pretrained's split, from its documentation: tensors in state-dict order; a new shard starts
    when the next tensor would take the current one past the limit; a larger tensor gets its own."""
    shards, current, used = [], [], 0
    for name, size in sizes:
        if size > limit:
            shards.append([name])
            continue
        if current and used + size > limit:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return shards + ([current] if current else [])


def llama_tt_file(cli, tmp_path, cfg, tie=False, tied_tt=False):
    tensors = support.llama_tensors(cfg, tie=tie)
    support.write_checkpoint(tmp_path / "ckpt", cfg, tensors)
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    (tmp_path / "ckpt" / "generation_config.json").write_text('{"do_sample": false}')
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(support.llama_tt_shapes(cfg, 96, tied=tied_tt)))
    assert cli("llama", "-i", init, "-o", tmp_path / "tt.msgpack", "--hf_model", tmp_path / "ckpt")[0] == 0
    return tmp_path / "tt.msgpack", tensors


@pytest.mark.parametrize("limit,tie", [("20KB", False), ("6000", True), ("1MB", False)])
def test_shards_follow_save_pretrained(cli, tmp_path, backend, limit, tie):
    cfg = support.llama_config(tie=tie)
    tt, tensors = llama_tt_file(cli, tmp_path, cfg, tie=tie, tied_tt=tie)
    status, _, err = cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf",
                         "--max-shard-size", limit)
    assert status == 0, err
    limit_bytes = {"20KB": 20_000, "6000": 6000, "1MB": 1_000_000}[limit]
    order = llama_state_dict_order(cfg, tie)
    expected = greedy_shards([(n, tensors[n].nbytes) for n in order], limit_bytes)
    out = tmp_path / "hf"
    if len(expected) == 1:
        assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                           "tokenizer.json"]
        files = {"model.safetensors": order}
    else:
        index = json.loads((out / "model.safetensors.index.json").read_text())
        names = [f"model-{k:05d}-of-{len(expected):05d}.safetensors" for k in range(1, len(expected) + 1)]
        files = dict(zip(names, expected))
        assert index["weight_map"] == {t: f for f, ts in files.items() for t in ts}
        assert index["metadata"]["total_size"] == sum(v.nbytes for v in tensors.values())
        assert sorted(os.listdir(out)) == sorted(names + ["config.json", "generation_config.json",
                                                          "model.safetensors.index.json", "tokenizer.json"])
    for name, in_file in files.items():
        with safe_open(str(out / name), "numpy") as shard:  # safetensors' own reader
            assert list(shard.keys()) == sorted(in_file)
            for key in in_file:
                assert shard.get_tensor(key).tobytes() == tensors[key].tobytes(), key
        raw = raw_safetensors(out / name)
        assert list(raw) == in_file  # written in the state dict's order
    assert (out / "generation_config.json").read_text() == '{"do_sample": false}'


@pytest.mark.parametrize("text,size", [("5GB", 5 * 10**9), ("500MB", 500 * 10**6), ("2GiB", 2 * 2**30),
                                       ("1.5KB", 1500), ("123456", 123456), (" 10 mb ", 10**7)])
def test_max_shard_size_takes_save_pretrained_sizes(text, size):
    assert safetensors_out.parse_size(text) == size


@pytest.mark.parametrize("text", ["five", "5XB", "0", "-1GB", ""])
def test_a_bad_max_shard_size_is_one_line(cli, tmp_path, text):
    cfg = support.llama_config()
    tt, _ = llama_tt_file(cli, tmp_path, cfg)
    status, _, err = cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf",
                         f"--max-shard-size={text}")
    assert status == 1 and err.startswith("ttconv: error: max shard size") and err.count("\n") == 1, err
    assert not (tmp_path / "hf").exists()


def test_input_positionally_or_with_i(cli, tmp_path):
    cfg = support.llama_config()
    tt, tensors = llama_tt_file(cli, tmp_path, cfg)
    for args in ([tt], ["-i", tt], [tt, "-i", tt]):
        status, _, err = cli("to-hf", "llama", *args, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf")
        assert status == 0, err
        assert load_file(str(tmp_path / "hf" / "model.safetensors")).keys() == tensors.keys()
    status, _, err = cli("to-hf", "llama", tt, "-i", tmp_path / "init.msgpack", "--hf_model", tmp_path / "ckpt",
                         "-o", tmp_path / "other")
    assert status == 1 and "name different inputs" in err and not (tmp_path / "other").exists()
    status, _, err = cli("to-hf", "llama", "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "other")
    assert status == 1 and "needs the tt-train file" in err and err.count("\n") == 1


def test_msgpack_exports_float32_by_default(cli, tmp_path):
    cfg = support.llama_config(torch_dtype="bfloat16")
    tt, tensors = llama_tt_file(cli, tmp_path, cfg)
    assert cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf")[0] == 0
    exported = raw_safetensors(tmp_path / "hf" / "model.safetensors")
    assert {dtype for dtype, _, _ in exported.values()} == {"F32"}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "float32"


def test_an_earlier_export_is_replaced_and_other_folders_refused(cli, tmp_path):
    cfg = support.llama_config()
    tt, tensors = llama_tt_file(cli, tmp_path, cfg)
    out = tmp_path / "hf"
    assert cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", out, "--max-shard-size", "10KB")[0] == 0
    assert (out / "model.safetensors.index.json").exists()
    assert cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", out)[0] == 0
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json"]  # the old shards went with the old folder
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    status, _, err = cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", notes)
    assert status == 1 and "not a Hugging Face checkpoint" in err and err.count("\n") == 1
    assert os.listdir(notes) == ["todo.txt"] and sorted(os.listdir(tmp_path)) == sorted(
        ["ckpt", "hf", "init.msgpack", "notes", "tt.msgpack"])


def test_positions_beyond_the_tt_context_come_from_the_original(cli, tmp_path):
    cfg = support.gpt2_config(positions=48)
    original = support.gpt2_tensors(cfg)
    support.write_checkpoint(tmp_path / "ckpt", cfg, original)
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(support.gpt2_tt_shapes(cfg, 128, 32), prefix="transformer/transformer",
                                             seed=5))
    status, _, err = cli("to-hf", "gpt2", init, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf")
    assert status == 0, err
    pos = load_file(str(tmp_path / "hf" / "model.safetensors"))["transformer.wpe.weight"]
    trained = support.tt_tensor(support.read_tt(init), "transformer/transformer", "pos_emb/weight")
    np.testing.assert_array_equal(pos[:32], trained)  # what the tt file holds (fine-tuned)
    np.testing.assert_array_equal(pos[32:], original["transformer.wpe.weight"][32:])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("buffer_bytes", [1536, 1 << 22])
def test_chunks_that_split_heads_and_rows_anywhere(cli, tmp_path, backend, monkeypatch, family, buffer_bytes):
    """Write buffers of 1.5 KB: chunks start and end inside RoPE heads and inside transposed runs (and
    of 4 MB: whole tensors at once); every gather of 16 rows or more is shared with the helper thread."""
    monkeypatch.setattr(output, "BUFFER_BYTES", buffer_bytes)
    monkeypatch.setattr(rows, "SPLIT_BYTES", 0)
    monkeypatch.setattr(rows, "SPLIT_ROWS", 8)
    if family == "llama":
        cfg = support.llama_config(vocab=70, tie=True)
        tensors, shapes, prefix = support.llama_tensors(cfg, tie=True), support.llama_tt_shapes(cfg, 96), "llama/llama"
    else:
        cfg = support.gpt2_config(positions=48)
        tensors, shapes = support.gpt2_tensors(cfg), support.gpt2_tt_shapes(cfg, 128, 32)
        prefix = "transformer/transformer"
    original, exported = roundtrip(cli, tmp_path, family, cfg, tensors, shapes, prefix)
    assert_same(original, exported)


@pytest.mark.parametrize("change", ["same size", "shorter", "misleading end"])
def test_msgpack_arrays_of_other_number_encodings_are_read_right(cli, tmp_path, monkeypatch, change):
    """to-hf indexes msgpack optimistically (long arrays whose first and last values are float32 and
    after which a key follows are taken for float32 values, unscanned); arrays holding other encodings
    must still come out right. "same size": an int and a float64 for two float32 values (5 bytes a
    value still; only the kernel's tag check notices). "shorter": an int for a float32 (the array's
    last value is not where a float32 array's would be). "misleading end": a float64 for a float32,
    with the bytes where a float32 array's last value and the next key would be made to look like
    them: the optimistic index fails further on and the file is indexed again, every value scanned."""
    monkeypatch.setattr(ttfile, "ASSUMED_MIN_VALUES", 16)
    cfg = support.llama_config()
    tt, tensors = llama_tt_file(cli, tmp_path, cfg)
    entry = ttfile.TtFile(tt).by_key["llama/llama/tok_emb/weight/value/data"]
    data = bytearray(tt.read_bytes())
    n = entry.n_elements
    payload = entry.end - 5 * n
    expected = tensors["model.embed_tokens.weight"].reshape(-1).astype(np.float64)
    at = payload + 5 * 10  # values 10 and 11 of the embedding
    if change == "same size":
        data[at:at + 10] = b"\x07" + b"\xcb" + struct.pack(">d", 0.375)
        expected[10:12] = [7.0, 0.375]
    elif change == "shorter":
        data[at:at + 5] = b"\x07"
        expected[10] = 7.0
    else:
        data[at:at + 5] = b"\xcb" + struct.pack(">d", 0.375)
        expected[10] = 0.375
        end = entry.end + 4  # the array's end now; a float32 array of n values would end 4 bytes earlier
        data[end - 4] = 0xA5  # first payload byte of the last value: a 5-byte key would start here
        data[end - 9] = 0xCA  # first payload byte of the value before: a float32 tag would be here
        for k, index in ((end - 5, n - 1), (end - 10, n - 2)):
            expected[index] = struct.unpack(">f", bytes(data[k + 1:k + 5]))[0]
    tt.write_bytes(bytes(data))
    indexings = []
    index = ttfile.TtFile._index
    monkeypatch.setattr(ttfile.TtFile, "_index", lambda self, cur: indexings.append(1) or index(self, cur))
    status, _, err = cli("to-hf", "llama", tt, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf")
    assert status == 0, err
    assert len(indexings) == (2 if change == "misleading end" else 1)
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    np.testing.assert_array_equal(exported["model.embed_tokens.weight"].reshape(-1), expected.astype(np.float32))
