"""Qwen3: `ttconv qwen3`, `to-hf qwen3`, `check qwen3`, `config qwen3`. Every tensor file written is loaded by
the real ttnn library and compared with an independent mapping of tt-train's loader (support.expected_qwen3);
the tiny Qwen3 models of tests/trained/make_trained.py (head_dim 32 = 2 * hidden / heads; untied float32 and
tied bfloat16) are checked against their trainer's loss; wrong q/k layouts fail; round trips; refusals."""
import json
import os

import ml_dtypes
import numpy as np
import pytest
import yaml

import conftest
import support
import ttdir_support as ts
from test_check import run_check
from test_ttdir import hf_checkpoint, one_error_line
from test_ttdir_out import assert_metadata, assert_model_loads, expected_metadata
from ttconv import kernels
from ttconv.cli import main
from ttconv.tt.ttdir import read_metadata

TRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained")
PREFIX = "qwen3/qwen3"
CASES = {
    "untied-gqa": dict(vocab=96),
    "tied-padded": dict(vocab=70, tie=True),
    "head-dim-64": dict(vocab=64, hidden=32, heads=2, kv_heads=1, head_dim=64, inter=40),
}


def padded_vocab(cfg):
    return -(-cfg["vocab_size"] // 32) * 32


ST_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16)}


def read_safetensors(path, stored=False):
    """{name: float32 values (stored: values as stored)} of a safetensors file, read from its header here
    (safetensors' own numpy reader has no bfloat16 before 0.4.3)."""
    with open(path, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        data = handle.read()
    tensors = {}
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            values = np.frombuffer(data[start:end], dtype=ST_DTYPES[info["dtype"]]).reshape(info["shape"])
            tensors[name] = values if stored else values.astype(np.float32)
    return tensors


def trained(name):
    folder = os.path.join(TRAINED, name)
    with open(os.path.join(folder, "config.json")) as handle:
        cfg = json.load(handle)
    return folder, cfg


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("layout", ["training", "model"])
def test_built_directory_loads_in_ttnn(cli, tmp_path, ttnn_tool, case, layout):
    cfg = support.qwen3_config(**CASES[case])
    tensors = support.qwen3_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    out = tmp_path / "out"
    status, _, err = cli("qwen3", "--layout", layout, "--hf_model", ckpt, "-o", out)
    assert status == 0, err
    shapes = support.qwen3_tt_shapes(cfg, padded_vocab(cfg))
    loaded = assert_model_loads(ttnn_tool, out, tmp_path, PREFIX, support.expected_qwen3(cfg, tensors, shapes))
    assert_metadata(out, expected_metadata("qwen3", "qwen3", shapes, layout))
    for key, (dtype, _, _, values) in loaded.items():
        if key.startswith("AdamW/"):
            assert dtype == 0 and not values.any(), key


def test_bfloat16_checkpoint_is_kept_exactly(cli, tmp_path, ttnn_tool):
    """A bfloat16 checkpoint's values reach the directory unchanged (no rounding happens)."""
    cfg = support.qwen3_config(vocab=80, tie=True)
    stored = support.write_checkpoint(tmp_path / "ckpt", cfg, support.qwen3_tensors(cfg), dtype="BF16")
    out = tmp_path / "out"
    status, _, err = cli("qwen3", "--layout", "model", "--hf_model", tmp_path / "ckpt", "-o", out)
    assert status == 0, err
    shapes = support.qwen3_tt_shapes(cfg, padded_vocab(cfg))
    expected = support.expected_qwen3(cfg, stored, shapes)
    assert all(np.array_equal(ts.bf16(v), v) for v in expected.values())
    assert_model_loads(ttnn_tool, out, tmp_path, PREFIX, expected)


def test_both_backends_write_the_same_directory(tmp_path, capsys):
    cfg = support.qwen3_config(vocab=70)
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    outputs = []
    for name in ("c", "jax"):
        patch = pytest.MonkeyPatch()
        if name == "jax" or not conftest.C_LOADED:
            patch.setattr(kernels, "_kernel", None)
        try:
            status = main(["qwen3", "--hf_model", str(ckpt), "-o", str(tmp_path / name), "-q"])
        finally:
            patch.undo()
        assert status == 0, capsys.readouterr().err
        outputs.append({f: (tmp_path / name / f).read_bytes() for f in sorted(os.listdir(tmp_path / name))})
    assert outputs[0] == outputs[1]


# ---------------------------------------------------------------- check on the trained models

@pytest.mark.parametrize("name", ["qwen3", "qwen3-tied"])
def test_check_reproduces_the_trainers_loss(cli, tmp_path, name):
    model, _ = trained(name)
    with open(os.path.join(model, "expected.json")) as handle:
        expected = json.load(handle)
    out = tmp_path / "out"
    status, _, err = cli("qwen3", "--hf_model", model, "-o", out)
    assert status == 0, err
    status, result, err = run_check(cli, "qwen3", out, model)
    assert status == 0 and result["ok"], err
    assert result["tokens"] == expected["sample_tokens"] and result["top1_agreement"] == 1.0
    for side in ("tt_loss", "hf_loss"):
        assert abs(result[side] - expected["sample_loss"]) < 1e-4 * expected["sample_loss"], side


@pytest.mark.parametrize("rows,norms", [(True, True), (False, True), (True, False), (False, False)])
def test_check_fails_unless_qk_rows_and_norms_are_permuted(cli, tmp_path, rows, norms):
    """A model dump written by the tests' own writer the way tt-train's loader fills it passes; with q/k
    rows or their norms left in Hugging Face order it fails."""
    model, cfg = trained("qwen3-tied")
    tensors = read_safetensors(os.path.join(model, "model.safetensors"))
    shapes = support.qwen3_tt_shapes(cfg, padded_vocab(cfg))
    values = support.expected_qwen3(cfg, tensors, shapes, permute_rows=rows, permute_norms=norms)
    path = ts.write_dir(tmp_path / "dump", ts.as_tt_tensors(values, PREFIX))
    status, result, err = run_check(cli, "qwen3", path, model)
    assert result["ok"] == (rows and norms) and status == (0 if rows and norms else 1), err
    if not (rows and norms):
        assert "ttconv: check failed" in err


def test_directory_written_like_tt_train_exports_exactly(cli, tmp_path):
    """to-hf on a training state as tt-train saves one (the tests' own writer, bfloat16): the checkpoint
    comes back value for value, tied embedding once."""
    model, cfg = trained("qwen3-tied")
    tensors = read_safetensors(os.path.join(model, "model.safetensors"))
    shapes = support.qwen3_tt_shapes(cfg, padded_vocab(cfg))
    values = support.expected_qwen3(cfg, tensors, shapes)
    path = ts.training_dir(tmp_path / "state", {f"qwen3/{n}": v for n, v in values.items()}, "qwen3")
    status, _, err = cli("to-hf", "qwen3", "-i", path, "--hf_model", model, "-o", tmp_path / "hf", "--dtype", "bf16")
    assert status == 0, err
    exported = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert sorted(exported) == sorted(tensors) and "lm_head.weight" not in exported
    for name, original in tensors.items():
        np.testing.assert_array_equal(exported[name], original, err_msg=name)
    stored = read_safetensors(tmp_path / "hf" / "model.safetensors", stored=True)
    original = read_safetensors(os.path.join(model, "model.safetensors"), stored=True)
    assert all(stored[name].dtype == ml_dtypes.bfloat16 and stored[name].tobytes() == original[name].tobytes()
               for name in original)


@pytest.mark.parametrize("case", ["untied-gqa", "head-dim-64"])
def test_round_trip_gives_the_checkpoint_in_bfloat16(cli, tmp_path, case):
    cfg = support.qwen3_config(**CASES[case])
    tensors = support.qwen3_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    status, _, err = cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out")
    assert status == 0, err
    status, _, err = cli("to-hf", "qwen3", "-i", tmp_path / "out", "--hf_model", ckpt, "-o", tmp_path / "hf")
    assert status == 0, err
    exported = read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert sorted(exported) == sorted(tensors)
    for name, original in tensors.items():
        np.testing.assert_array_equal(exported[name], ts.bf16(original), err_msg=name)


# ---------------------------------------------------------------- filling a training state

@pytest.mark.parametrize("keep", [False, True])
def test_fill_training_state(cli, tmp_path, ttnn_tool, keep):
    cfg = support.qwen3_config(vocab=96)
    tensors = support.qwen3_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    shapes = support.qwen3_tt_shapes(cfg, 96)
    old = {f"qwen3/{name}": np.full((1, 1, *shape), 0.5, np.float32) for name, shape in shapes.items()}
    state = ts.training_dir(tmp_path / "state", old, "qwen3", steps=7)
    before = {f: (state / f).read_bytes() for f in os.listdir(state)}
    out = tmp_path / "out"
    status, _, err = cli("qwen3", "-i", state, "--hf_model", ckpt, "-o", out, *(["--keep-optimizer-state"] * keep))
    assert status == 0, err
    assert {f: (state / f).read_bytes() for f in os.listdir(state)} == before
    loaded = assert_model_loads(ttnn_tool, out, tmp_path, PREFIX, support.expected_qwen3(cfg, tensors, shapes))
    moments = {k: v for k, v in loaded.items() if k.startswith("AdamW/exp_avg")}
    assert len(moments) == 2 * len(shapes)
    for key, (_, _, _, values) in moments.items():
        name = ts.sanitize(key)
        assert ((out / name).read_bytes() == (state / name).read_bytes()) if keep else not values.any(), key
    assert read_metadata(out / "metadata.flatbuffer")["AdamW/steps"].value == (7 if keep else 0)


# ---------------------------------------------------------------- config, inspect, dry run

def test_config_yaml_has_tt_trains_qwen3_keys(cli, tmp_path):
    model, cfg = trained("qwen3")
    status, out, err = cli("config", "qwen3", "--hf_model", model)
    assert status == 0, err
    training = yaml.safe_load(out)["training_config"]
    assert training["model_type"] == "qwen3" and training["model_path"] == "data/tt_model"
    assert training["transformer_config"] == {
        "num_heads": 4, "num_groups": 2, "embedding_dim": 64, "head_dim": 32, "intermediate_dim": 128,
        "dropout_prob": 0.0, "num_blocks": 2, "vocab_size": 416, "max_sequence_length": 128,
        "weight_tying": "disabled", "runner_type": "default", "theta": 1000000.0, "rms_norm_eps": 1e-6}


def test_dump_config_with_rope_scaling_and_tokenizer(cli, tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
               "original_max_position_embeddings": 32}
    cfg = support.qwen3_config(tie=True, rope_scaling=scaling)
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    with open(os.path.join(TRAINED, "qwen3", "tokenizer.json"), "rb") as source:
        (ckpt / "tokenizer.json").write_bytes(source.read())
    out, yaml_path, tokenizer = tmp_path / "out", tmp_path / "c.yaml", tmp_path / "tok.json"
    status, _, err = cli("qwen3", "--hf_model", ckpt, "-o", out, "-t", tokenizer, "--dump-config", yaml_path,
                         "--scheduler", "warmup_linear")
    assert status == 0, err
    training = yaml.safe_load(yaml_path.read_text())["training_config"]
    assert training["model_path"] == str(out) and training["tokenizer_path"] == str(tokenizer)
    assert training["scheduler_type"] == "warmup_linear"
    assert training["transformer_config"]["weight_tying"] == "enabled"
    assert training["transformer_config"]["rope_scaling"] == {
        "scaling_factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, "original_context_length": 32}
    assert json.loads(tokenizer.read_text())["model"]["type"] == "BPE"
    assert (out / "metadata.flatbuffer").exists()


def test_inspect_names_the_family(cli, tmp_path):
    cfg = support.qwen3_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    assert cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out")[0] == 0
    status, out, _ = cli("inspect", tmp_path / "out")
    assert status == 0 and "family: Qwen3 (ttconv qwen3)" in out
    status, out, _ = cli("inspect", tmp_path / "out", "--json")
    assert json.loads(out)["family"] == "qwen3"


def test_dry_run_shows_the_norm_permutation_and_writes_nothing(cli, tmp_path):
    cfg = support.qwen3_config(layers=1)
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    status, out, err = cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out", "--dry-run")
    assert status == 0, err
    assert (f"{PREFIX}/qwen3_block_0/self_attn/q_norm/gamma/value [1, 32] <- "
            "model.layers.0.self_attn.q_norm.weight (RoPE interleave of its head_dim values)") in out
    assert f"{PREFIX}/qwen3_block_0/self_attn/k_linear/weight/value [64, 64] <- " \
           "model.layers.0.self_attn.k_proj.weight (RoPE interleave, 2 heads)" in out
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- refusals

REFUSED_CONFIGS = {
    "attention bias": (dict(attention_bias=True), "attention_bias is true (biases in a Qwen3-family model)"),
    "sliding window": (dict(use_sliding_window=True, sliding_window=16, max_window_layers=1),
                       "sliding_window 16 is shorter than the context of 64 positions"),
    "layer types": (dict(sliding_window=16, layer_types=["full_attention", "sliding_attention"]),
                    "sliding_window 16 is shorter"),
    "yarn": (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "RoPE scaling 'yarn'"),
    "head_dim 16": (dict(head_dim=16), "head_dim 16 (tt-train's RoPE needs a multiple of 32 up to 256)"),
    "head_dim 512": (dict(head_dim=512, hidden=64), "head_dim 512"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_CONFIGS))
def test_what_tt_trains_qwen3_cannot_represent_is_one_line(cli, tmp_path, case):
    extra, message = REFUSED_CONFIGS[case]
    cfg = support.qwen3_config(**extra)
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(support.qwen3_config()))
    status, _, err = cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and message in err and "tt-train cannot represent" in err, err
    assert not (tmp_path / "out").exists()


def test_sliding_window_unused_by_any_layer_is_accepted(cli, tmp_path):
    cfg = support.qwen3_config(use_sliding_window=True, sliding_window=16, max_window_layers=2)
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    status, _, err = cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out")
    assert status == 0, err


def test_attention_bias_tensors_are_refused(cli, tmp_path):
    cfg = support.qwen3_config()
    tensors = support.qwen3_tensors(cfg)
    tensors["model.layers.1.self_attn.q_proj.bias"] = np.zeros(128, np.float32)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    status, _, err = cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err), err
    assert "biases in a Qwen3-family model (model.layers.1.self_attn.q_proj.bias)" in err


def test_msgpack_is_refused_in_one_line(cli, tmp_path):
    cfg = support.qwen3_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    status, _, err = cli("qwen3", "--hf_model", ckpt, "-o", tmp_path / "out.msgpack", "--format", "msgpack")
    assert status == 1 and one_error_line(err) and "no tt-train that reads msgpack has it" in err, err
    init = os.path.join(support.FIXTURES, "llama-mini", "init.msgpack")
    status, _, err = cli("qwen3", "-i", init, "--hf_model", ckpt, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "no tt-train that reads msgpack has Qwen3" in err, err
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_families_point_to_each_other(cli, tmp_path):
    qwen3 = support.qwen3_config()
    qwen3_ckpt = hf_checkpoint(tmp_path, qwen3, support.qwen3_tensors(qwen3), name="qwen3")
    status, _, err = cli("llama", "--no-init", "--hf_model", qwen3_ckpt, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "is a 'qwen3' checkpoint, not Llama; use 'ttconv qwen3'" in err
    llama = support.llama_config()
    llama_ckpt = hf_checkpoint(tmp_path, llama, support.llama_tensors(llama), name="llama")
    status, _, err = cli("qwen3", "--hf_model", llama_ckpt, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "is a 'llama' checkpoint, not Qwen3; use 'ttconv llama'" in err
    # a Llama-labelled checkpoint that has q/k norms: a Qwen3 in disguise
    tensors = support.llama_tensors(llama)
    tensors["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)
    disguised = hf_checkpoint(tmp_path, llama, tensors, name="disguised")
    status, _, err = cli("llama", "--no-init", "--hf_model", disguised, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "q/k norms" in err and "use 'ttconv qwen3'" in err, err
    assert not (tmp_path / "out").exists()


def test_check_of_a_llama_directory_as_qwen3_is_one_line(cli, tmp_path):
    cfg = support.qwen3_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.qwen3_tensors(cfg))
    dump = ts.write_dir(tmp_path / "dump", {"llama/llama/fc/weight": np.zeros((1, 1, 96, 64), np.float32),
                                           "llama/llama/llama_block_0/mlp/w1/weight": np.zeros((1, 1, 96, 64))})
    status, _, err = cli("check", "qwen3", dump, "--hf_model", ckpt)
    assert status == 1 and one_error_line(err) and "holds a Llama model; use 'ttconv llama'" in err, err
