"""Writing checkpoint directories (--format flatbuffer): every tensor file loaded by the real ttnn library,
the metadata against tt-train's key names and types and against flatc's reading, filling a training
state, round trips, check, refusals and atomic replacement."""
import json
import os
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import support
import ttdir_support as ts
from test_check import run_check
from test_export_hf import raw_safetensors
from test_ttdir import SCHEMAS, hf_checkpoint, one_error_line
from ttconv.tt.ttdir import read_metadata

TRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained")
CORPUS = os.path.join(TRAINED, "corpus.txt")


def sanitized(key):
    return key.replace("/", "_") + ".tensorbin"


def uint32s(dims):
    return list(struct.pack(f"<{len(dims)}I", *dims))


def parameter_entries(name, rows, cols, trainable):
    """tt-train's seven entries of a parameter N (write_module): N/value and its tensor keys, N's grad flags."""
    value = f"{name}/value"
    return {value: ("StringValue", sanitized(value)), value + "/shape": ("VectorUInt8", uint32s([1, 1, rows, cols])),
            value + "/data_type": ("IntValue", 0), value + "/layout": ("IntValue", 1),
            value + "/storage_type": ("IntValue", 1), f"{name}/requires_grads": ("BoolValue", trainable),
            f"{name}/has_grads": ("BoolValue", False)}


def expected_metadata(model_type, root, shapes, layout, scheduler="identity", lr=3e-4, max_steps=5000):
    """{key: (union type, value)} of tt-train's save_training_state (layout "training") or -s dump ("model")
    for a fresh model, written out from tt-train's sources (module, AdamW and scheduler state dicts)."""
    entries = {}
    for name, (rows, cols) in shapes.items():
        entries.update(parameter_entries(f"{model_type}/{root}/{name}", rows, cols, True))
    if layout == "model":
        return entries
    for moment in ("exp_avg", "exp_avg_sq"):
        for name, (rows, cols) in shapes.items():
            entries.update(parameter_entries(f"AdamW/{moment}/{root}/{name}", rows, cols, False))
    entries.update({"AdamW/steps": ("SizeTValue", 0), "AdamW/lr": ("FloatValue", lr),
                    "AdamW/amsgrad": ("BoolValue", False)})
    if scheduler == "identity":  # LambdaScheduler
        entries.update({"scheduler/m_last_step": ("SizeTValue", 0), "scheduler/m_last_lr": ("FloatValue", lr),
                        "scheduler/m_base_lr": ("FloatValue", lr)})
        return entries
    warmup = int(max_steps * 0.1)  # SequentialScheduler of two LinearSchedulers, each under scheduler_{i}/
    entries.update({"scheduler/m_current_step_in_scheduler": ("IntValue", 0), "scheduler/m_last_lr": ("FloatValue", lr),
                    "scheduler/m_current_scheduler_index": ("SizeTValue", 0)})
    for i, (start, end, total) in enumerate([(0.0, 1.0, warmup), (1.0, 0.01, max_steps - warmup)]):
        child = f"scheduler/scheduler_{i}/"
        entries.update({child + "m_last_step": ("SizeTValue", 0), child + "m_last_lr": ("FloatValue", lr),
                        child + "m_base_lr": ("FloatValue", lr), child + "m_start_factor": ("FloatValue", start),
                        child + "m_end_factor": ("FloatValue", end), child + "m_total_steps": ("IntValue", total)})
    return entries


def assert_metadata(path, expected):
    values = read_metadata(path / "metadata.flatbuffer")
    assert sorted(values) == sorted(expected)
    for key, (value_type, value) in expected.items():
        got = values[key]
        mine = got.value.tolist() if isinstance(got.value, np.ndarray) else got.value
        assert (got.type, mine) == (value_type, pytest.approx(value)), key


def ttnn_tensors(ttnn_tool, path, tmp_path):
    """{tensor key: (data type, layout, dims, float32 values as [rows, cols])} of every tensor file of a
    directory, each loaded by the real ttnn library."""
    loaded = {}
    for key, value in read_metadata(path / "metadata.flatbuffer").items():
        if value.type == "StringValue" and value.value.endswith(".tensorbin"):
            dtype, layout, dims, values = ttnn_tool.read(path / value.value, tmp_path)
            loaded[key] = (dtype, layout, dims, values.reshape(dims[2], dims[3]))
    assert sorted(os.listdir(path)) == sorted(["metadata.flatbuffer"] + [sanitized(k) for k in loaded])
    return loaded


def assert_model_loads(ttnn_tool, path, tmp_path, prefix, expected, data_type=0):
    """Every tensor under prefix is loaded by ttnn as the expected values rounded to bfloat16, TILE."""
    loaded = ttnn_tensors(ttnn_tool, path, tmp_path)
    model = {k[len(prefix) + 1:-len("/value")]: v for k, v in loaded.items() if k.startswith(prefix + "/")}
    assert sorted(model) == sorted(expected)
    for name, values in expected.items():
        dtype, layout, dims, got = model[name]
        assert (dtype, layout, dims) == (data_type, 1, [1, 1, *values.shape]), name
        np.testing.assert_array_equal(got, ts.bf16(values) if data_type == 0 else values, err_msg=name)
    return loaded


# ---------------------------------------------------------------- built from config.json

LLAMA_CASES = {
    "gqa": dict(vocab=96, kv_heads=2),
    "tied-padded": dict(vocab=70, kv_heads=4, tie=True),
    "head-dim": dict(vocab=64, hidden=32, heads=2, kv_heads=1, head_dim=32, inter=40),
}


@pytest.mark.parametrize("case", sorted(LLAMA_CASES))
@pytest.mark.parametrize("layout", ["training", "model"])
def test_llama_built_directory_loads_in_ttnn(cli, tmp_path, ttnn_tool, flatc, case, layout):
    cfg = support.llama_config(**LLAMA_CASES[case])
    tensors = support.llama_tensors(cfg, tie=cfg["tie_word_embeddings"])
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    out = tmp_path / "out"
    status, _, err = cli("llama", "--no-init", "--format", "flatbuffer", "--layout", layout, "--hf_model", ckpt,
                         "-o", out)
    assert status == 0, err
    vocab = -(-cfg["vocab_size"] // 32) * 32
    shapes = support.llama_tt_shapes(cfg, vocab, tied=cfg["tie_word_embeddings"])
    expected = support.expected_llama(cfg, tensors, shapes)
    loaded = assert_model_loads(ttnn_tool, out, tmp_path, "llama/llama", expected)
    assert_metadata(out, expected_metadata("llama", "llama", shapes, layout))
    for key, (dtype, _, _, values) in loaded.items():
        if key.startswith("AdamW/"):
            assert dtype == 0 and not values.any(), key
    pairs = ts.flatc_json(flatc, os.path.join(SCHEMAS, "ttml_metadata.fbs"), out / "metadata.flatbuffer", tmp_path)
    assert len(pairs["pairs"]) == len(read_metadata(out / "metadata.flatbuffer"))


def test_tensors_across_many_output_buffers_load_in_ttnn(cli, tmp_path, ttnn_tool, backend, monkeypatch):
    # 32 KB output buffers, 8 KB tile rows: each buffer holds a block of three tile rows after the file's
    # header and the start of a fourth, which is tiled apart (q's rows RoPE-permuted) and copied in
    monkeypatch.setattr("ttconv.output.BUFFER_BYTES", 32 * 1024)
    cfg = support.llama_config(vocab=300, hidden=128, heads=4, kv_heads=2, inter=192)
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    out = tmp_path / "out"
    status, _, err = cli("llama", "--no-init", "--format", "flatbuffer", "--layout", "model", "--hf_model", ckpt,
                         "-o", out)
    assert status == 0, err
    shapes = support.llama_tt_shapes(cfg, 320, tied=False)
    assert_model_loads(ttnn_tool, out, tmp_path, "llama/llama", support.expected_llama(cfg, tensors, shapes))


@pytest.mark.parametrize("lm_head,vocab", [(True, 100), (False, 64)])
def test_gpt2_built_directory_loads_in_ttnn(cli, tmp_path, ttnn_tool, lm_head, vocab):
    cfg = support.gpt2_config(vocab=vocab)
    tensors = support.gpt2_tensors(cfg, lm_head=lm_head)
    cfg["tie_word_embeddings"] = not lm_head
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    out = tmp_path / "out"
    status, _, err = cli("gpt2", "--format", "flatbuffer", "-o", out, "--hf_model", ckpt)
    assert status == 0, err
    shapes = support.gpt2_tt_shapes(cfg, -(-vocab // 32) * 32, cfg["n_positions"], tied=not lm_head)
    assert_model_loads(ttnn_tool, out, tmp_path, "gpt2/transformer", support.expected_gpt2(tensors, shapes))
    assert_metadata(out, expected_metadata("gpt2", "transformer", shapes, "training"))


def test_bf16_sharded_checkpoint_is_kept_exactly(cli, tmp_path, ttnn_tool):
    cfg = support.llama_config()
    stored = support.write_checkpoint(tmp_path / "ckpt", cfg, support.llama_tensors(cfg), dtype="BF16", shards=3)
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    status, _, err = cli("llama", "--no-init", "--format", "flatbuffer", "--layout", "model",
                         "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "out")
    assert status == 0, err
    shapes = support.llama_tt_shapes(cfg, 96)
    assert_model_loads(ttnn_tool, tmp_path / "out", tmp_path, "llama/llama", support.expected_llama(cfg, stored, shapes))


def test_warmup_linear_state_and_yaml(cli, tmp_path, ttnn_tool):
    cfg = support.llama_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.llama_tensors(cfg))
    out = tmp_path / "out"
    status, _, err = cli("llama", "--no-init", "--format", "flatbuffer", "--scheduler", "warmup_linear",
                         "--learning-rate", "1e-3", "--max-steps", "800", "--hf_model", ckpt, "-o", out,
                         "--dump-config", tmp_path / "train.yaml")
    assert status == 0, err
    assert_metadata(out, expected_metadata("llama", "llama", support.llama_tt_shapes(cfg, 96), "training",
                                           "warmup_linear", 1e-3, 800))
    ttnn_tensors(ttnn_tool, out, tmp_path)
    yaml = (tmp_path / "train.yaml").read_text()
    assert f"model_path: {json.dumps(str(out))}" in yaml and "max_steps: 800" in yaml
    assert 'scheduler_type: "warmup_linear"' in yaml and "model_type: \"llama\"" in yaml


def test_both_backends_write_the_same_bytes(tmp_path, ttnn_tool):
    cfg = support.gpt2_config(vocab=70)
    ckpt = hf_checkpoint(tmp_path, cfg, support.gpt2_tensors(cfg))
    outputs = {}
    for backend in ("c", "jax"):
        out = tmp_path / backend
        subprocess.run([sys.executable, "-m", "ttconv", "gpt2", "--format", "flatbuffer", "--hf_model", str(ckpt),
                        "-o", str(out), "-q"], check=True, env={**os.environ, "TTCONV_BACKEND": backend})
        outputs[backend] = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}
    assert outputs["c"] == outputs["jax"]
    ttnn_tensors(ttnn_tool, tmp_path / "c", tmp_path)


# ---------------------------------------------------------------- round trips and check

def test_to_hf_of_a_written_directory_is_the_checkpoint_in_bfloat16(cli, tmp_path, ttnn_tool):
    cfg = support.llama_config(vocab=70, tie=True)
    tensors = support.llama_tensors(cfg, tie=True)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    assert cli("llama", "--format", "flatbuffer", "--no-init", "--hf_model", ckpt, "-o", tmp_path / "dir")[0] == 0
    ttnn_tensors(ttnn_tool, tmp_path / "dir", tmp_path)
    status, _, err = cli("to-hf", "llama", "-i", tmp_path / "dir", "--hf_model", ckpt, "-o", tmp_path / "hf")
    assert status == 0, err
    back = raw_safetensors(tmp_path / "hf" / "model.safetensors")  # bfloat16, as the directory holds it
    assert sorted(back) == sorted(tensors)
    for name, values in tensors.items():
        assert back[name][:2] == ("BF16", list(values.shape)), name
        assert back[name][2] == values.astype(ml_dtypes.bfloat16).tobytes(), name


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_check_passes_on_a_written_trained_model(cli, tmp_path, ttnn_tool, family):
    """The trained float32 checkpoint, written as bfloat16: check compares it with the checkpoint
    rounded the same way, and the losses then agree to 1e-4 with every top-1 prediction."""
    source = os.path.join(TRAINED, family)
    status, _, err = cli(family, "--format", "flatbuffer", "--no-init", "--hf_model", source, "-o", tmp_path / "dir")
    assert status == 0, err
    ttnn_tensors(ttnn_tool, tmp_path / "dir", tmp_path)
    status, result, err = run_check(cli, family, tmp_path / "dir", source, "--text", CORPUS)
    assert status == 0 and result["ok"] and result["top1_agreement"] == 1.0, err
    assert result["hf_weights_rounded_to_bfloat16"] is True
    assert abs(result["tt_loss"] - result["hf_loss"]) <= 1e-4 * result["hf_loss"]


def test_check_still_fails_a_written_model_with_unpermuted_qk(cli, tmp_path):
    source = os.path.join(TRAINED, "llama")
    status, _, err = cli("llama", "--format", "flatbuffer", "--no-init", "--meta_style", "--hf_model", source,
                         "-o", tmp_path / "dir")
    assert status == 0, err
    status, result, _ = run_check(cli, "llama", tmp_path / "dir", source, "--text", CORPUS)
    assert status == 1 and not result["ok"]


# ---------------------------------------------------------------- filling a directory

def trained_state(tmp_path, cfg, tensors, optimizer="AdamW", masters=False):
    """A training state written like tt-train's (tests' own writer), its model from other weights."""
    shapes = support.llama_tt_shapes(cfg, 96)
    old = support.expected_llama(cfg, support.llama_tensors(cfg, seed=9), shapes)
    model = {f"llama/{n}": v.reshape(1, 1, *v.shape) for n, v in old.items()}
    master_values = {n: v + 1e-3 for n, v in model.items()} if masters else None
    path = ts.training_dir(tmp_path / "state", model, "llama", optimizer=optimizer, masters=master_values)
    return path, shapes


def file_bytes(path):
    return {name: (path / name).read_bytes() for name in os.listdir(path)}


@pytest.mark.parametrize("keep", [False, True])
def test_filling_a_training_state(cli, tmp_path, ttnn_tool, keep):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    state, shapes = trained_state(tmp_path, cfg, tensors)
    before = file_bytes(state)
    out = tmp_path / "out"
    status, _, err = cli("llama", "-i", state, "--hf_model", ckpt, "-o", out,
                         *(["--keep-optimizer-state"] if keep else []))
    assert status == 0, err
    assert file_bytes(state) == before  # the input is untouched
    assert ("state kept as it was" if keep else "(38 moment tensors zeroed, 2 step counters set to 0)") in err
    loaded = assert_model_loads(ttnn_tool, out, tmp_path, "llama/llama", support.expected_llama(cfg, tensors, shapes))
    old, new = read_metadata(state / "metadata.flatbuffer"), read_metadata(out / "metadata.flatbuffer")
    assert list(new) == list(old)
    after = file_bytes(out)
    for key, value in old.items():
        counter = key in ("AdamW/steps", "scheduler/m_last_step")
        if counter and not keep:
            assert (new[key].type, new[key].value) == (value.type, 0), key
        elif key.startswith("AdamW/exp_avg") and key.endswith("/value") and not keep:
            header = tensor_header_bytes(state / value.value)
            assert after[value.value][:len(header)] == header and not loaded[key][3].any(), key
        elif not key.startswith("llama/llama/") or not key.endswith("/value"):
            assert new[key].type == value.type, key
            assert np.array_equal(new[key].value, value.value), key
            if value.type == "StringValue":
                assert after[value.value] == before[value.value], key


def tensor_header_bytes(path):
    data = path.read_bytes()
    return data[:8 + int.from_bytes(data[:8], "little")]


def test_full_precision_master_weights_are_filled_exactly(cli, tmp_path, ttnn_tool):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    state, shapes = trained_state(tmp_path, cfg, tensors, optimizer="AdamWFullPrecision", masters=True)
    status, _, err = cli("llama", "-i", state, "--hf_model", ckpt, "-o", tmp_path / "out")
    assert status == 0, err
    expected = support.expected_llama(cfg, tensors, shapes)
    assert_model_loads(ttnn_tool, tmp_path / "out", tmp_path, "AdamWFullPrecision/master_weights/llama", expected,
                       data_type=1)


def test_prefix_moves_the_model_of_a_directory(cli, tmp_path, ttnn_tool):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    state, shapes = trained_state(tmp_path, cfg, tensors)
    status, _, err = cli("llama", "-i", state, "--hf_model", ckpt, "-o", tmp_path / "out", "--prefix", "tinyllama/llama")
    assert status == 0, err
    assert_model_loads(ttnn_tool, tmp_path / "out", tmp_path, "tinyllama/llama",
                       support.expected_llama(cfg, tensors, shapes))


# ---------------------------------------------------------------- refusals and atomic replacement

def test_a_foreign_directory_is_refused(cli, tmp_path):
    cfg = support.gpt2_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.gpt2_tensors(cfg))
    llama_cfg = support.llama_config()
    llama_ckpt = hf_checkpoint(tmp_path, llama_cfg, support.llama_tensors(llama_cfg), name="llama")
    assert cli("llama", "--no-init", "--format", "flatbuffer", "--hf_model", llama_ckpt, "-o", tmp_path / "llama_dir")[0] == 0
    status, _, err = cli("gpt2", "-i", tmp_path / "llama_dir", "-o", tmp_path / "out", "--hf_model", ckpt)
    assert status == 1 and one_error_line(err) and "ttconv llama" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("existing", ["file", "plain directory"])
def test_an_existing_path_that_is_not_a_checkpoint_is_refused_untouched(cli, tmp_path, existing):
    cfg = support.llama_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.llama_tensors(cfg))
    out = tmp_path / "out"
    if existing == "file":
        out.write_bytes(b"keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    status, _, err = cli("llama", "--no-init", "--format", "flatbuffer", "--hf_model", ckpt, "-o", out)
    assert status == 1 and one_error_line(err) and "ttconv replaces only a tt-train checkpoint directory" in err, err
    assert (out.read_bytes() if existing == "file" else (out / "notes.txt").read_bytes()) == b"keep me"
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "out"]


def test_an_existing_checkpoint_directory_is_replaced_whole(cli, tmp_path, ttnn_tool):
    cfg = support.llama_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.llama_tensors(cfg))
    out = tmp_path / "out"
    assert cli("llama", "--no-init", "--format", "flatbuffer", "--hf_model", ckpt, "-o", out)[0] == 0
    (out / "stale.tensorbin").write_bytes(b"from an older run")
    status, _, err = cli("llama", "--no-init", "--format", "flatbuffer", "--layout", "model", "--hf_model", ckpt,
                         "-o", out)
    assert status == 0, err
    assert "stale.tensorbin" not in os.listdir(out) and len(read_metadata(out / "metadata.flatbuffer")) == 19 * 7
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "out"]
    ttnn_tensors(ttnn_tool, out, tmp_path)


def test_msgpack_input_with_format_flatbuffer_is_refused(cli, tmp_path):
    mini = os.path.join(support.FIXTURES, "llama-mini")
    status, _, err = cli("llama", "-i", f"{mini}/init.msgpack", "--hf_model", mini, "--format", "flatbuffer",
                         "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "--format flatbuffer fills a checkpoint directory" in err, err
    assert os.listdir(tmp_path) == []


def test_dry_run_writes_nothing(cli, tmp_path):
    cfg = support.llama_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.llama_tensors(cfg))
    status, out, err = cli("llama", "--no-init", "--format", "flatbuffer", "--hf_model", ckpt, "-o",
                           tmp_path / "out", "--dry-run")
    assert status == 0, err
    assert "llama/llama/llama_block_0/attention/q_linear/weight/value" in out and "RoPE interleave" in out
    values = int(out.split(" values,")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert f"about {values * 2:,} bytes of weights" in out  # bfloat16: two bytes a value
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_api_convert_is_keyword_only(tmp_path, ttnn_tool):
    import ttconv

    cfg = support.llama_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.llama_tensors(cfg))
    with pytest.raises(TypeError):
        ttconv.convert("llama", ckpt, tmp_path / "out", None, "flatbuffer")
    report = ttconv.convert("llama", str(ckpt), str(tmp_path / "out"), format="flatbuffer", layout="model")
    assert report.tensors == 19 and (tmp_path / "out" / "metadata.flatbuffer").is_file()
    ttnn_tensors(ttnn_tool, tmp_path / "out", tmp_path)


@pytest.mark.parametrize("where,message", [("itself", "same directory as input"),
                                           ("inside", "inside the input directory")])
def test_an_output_onto_or_inside_the_input_directory_is_refused(cli, tmp_path, where, message):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    state, _ = trained_state(tmp_path, cfg, tensors)
    before = file_bytes(state)
    status, _, err = cli("llama", "-i", state, "--hf_model", ckpt, "-o", state if where == "itself" else state / "filled")
    assert status == 1 and one_error_line(err) and message in err, err
    assert file_bytes(state) == before
