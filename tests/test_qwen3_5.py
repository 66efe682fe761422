"""Qwen3.5 (tt-train's Qwen3.8) out of tt-train: ttml checkpoints as tt-train's loader holds the
model (1 + w in the zero-centred norms, conv1d as taps, the embedding padded), exported against the
tiny checkpoint transformers wrote (fixtures/qwen3_5-mini, vision tower included); the expected
tensors are computed here from the original apart from ttconv."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import lora_support
import support
import ttml_support as ts
from test_check import one_error_line
from test_export_hf import raw_safetensors

MODEL = os.path.join(support.FIXTURES, "qwen3_5-mini")
ROOT = "Qwen38Transformer"
LM = "model.language_model."
ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_norm.weight",
                "self_attn.k_norm.weight")


def original():
    return {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).reshape(shape)
            for name, (dtype, shape, data) in raw_safetensors(os.path.join(MODEL, "model.safetensors")).items()}


def zero_centred(name):
    return name.endswith(ZERO_CENTRED) or name == LM + "norm.weight"


def qkv_order(tp):
    """in_proj_qkv's rows as tt-train's loader orders them for tp devices: each device's q heads, k
    heads and v heads in turn (tiny model: 2 key heads of 16, 4 value heads of 16)."""
    key_heads, value_heads, dim = 2, 4, 16
    order = []
    for device in range(tp):
        for base, heads in ((0, key_heads), (key_heads * dim, key_heads), (2 * key_heads * dim, value_heads)):
            per = heads // tp
            for head in range(device * per, (device + 1) * per):
                order.extend(range(base + head * dim, base + (head + 1) * dim))
    return np.array(order)


def ttml_model(t, tp=1):
    """{ttml name: 4-D float32} as tt-train's qwen38 loader fills its model from the checkpoint t
    (gathered from tp devices)."""
    out = {}
    order = qkv_order(tp)
    for name, w in t.items():
        if not name.startswith(LM) and name != "lm_head.weight":
            continue  # the vision tower: not in the text model
        w = w.astype(np.float32)
        if name == LM + "embed_tokens.weight":
            out[f"{ROOT}/embed_tokens/weight"] = ts.four_d(ts.pad_vocab(w))
            continue
        if name == "lm_head.weight":
            out[f"{ROOT}/lm_head/weight"] = ts.four_d(w)
            continue
        if name == LM + "norm.weight":
            out[f"{ROOT}/norm/weight"] = ts.four_d(w + np.float32(1))
            continue
        layer, tail = name[len(LM + "layers."):].split(".", 1)
        prefix = f"{ROOT}/layers/{layer}/"
        if tail == "linear_attn.conv1d.weight":
            for j in range(w.shape[2]):
                out[f"{prefix}linear_attn/conv_tap_{j}"] = ts.four_d(w[order, 0, j].copy())
        elif tail == "linear_attn.in_proj_qkv.weight":
            out[prefix + "linear_attn/in_proj_qkv/weight"] = ts.four_d(w[order])
        elif tail == "linear_attn.norm.weight":
            out[prefix + "linear_attn/norm_weight"] = ts.four_d(w)  # the gated norm takes its weight as it is
        elif tail in ("linear_attn.A_log", "linear_attn.dt_bias"):
            out[prefix + tail.replace(".", "/")] = ts.four_d(w)
        else:
            out[prefix + tail.replace(".", "/")] = ts.four_d(w + np.float32(1) if zero_centred(name) else w)
    return out


def expected(t, bf16):
    """The export's tensors: the original's, with (1 + w) - 1 where tt-train added one, rounded as the file."""
    out = {}
    for name, w in t.items():
        if not name.startswith(LM) and name != "lm_head.weight":
            # copied from the original: byte for byte in its own dtype, rounded as every tensor for another
            out[name] = w.astype(ml_dtypes.bfloat16) if bf16 else w
            continue
        w = w.astype(np.float32)
        if zero_centred(name):
            held = w + np.float32(1)
            if bf16:
                held = held.astype(ml_dtypes.bfloat16).astype(np.float32)
            w = held - np.float32(1)
        out[name] = w.astype(ml_dtypes.bfloat16) if bf16 else w
    return out


def exported(folder):
    return {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).reshape(shape)
            for name, (dtype, shape, data) in raw_safetensors(os.path.join(folder, "model.safetensors")).items()}


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("command", ["qwen3.5", "qwen38"])
def test_a_fine_tune_exports_to_the_originals_layout(cli, tmp_path, bf16, command, backend):
    t = original()
    model = ttml_model(t)
    path = ts.write_stream(tmp_path / "run.pkl", ts.as_bf16(model) if bf16 else model, header={"step": 3})
    status, _, err = cli("to-hf", command, path, "--hf_model", MODEL, "-o", tmp_path / "hf")
    assert status == 0, err
    got, want = exported(tmp_path / "hf"), expected(t, bf16)
    assert set(got) == set(want)
    for name, values in want.items():
        assert got[name].dtype == values.dtype and got[name].shape == values.shape, name
        assert got[name].tobytes() == values.tobytes(), name
    config = json.load(open(tmp_path / "hf" / "config.json"))
    assert config["model_type"] == "qwen3_5" and config["text_config"]["layer_types"][:2] == ["linear_attention",
                                                                                               "full_attention"]
    assert config.get("dtype", config.get("torch_dtype")) == ("bfloat16" if bf16 else "float32")


def test_what_the_file_does_not_hold_is_copied_from_the_original(cli, tmp_path):
    # hub checkpoints carry an MTP head that transformers does not load: it comes back byte for byte
    original_dir = tmp_path / "original"
    shutil.copytree(MODEL, original_dir)
    t = original()
    extra = {"mtp.fc.weight": np.arange(64 * 128, dtype=np.float32).reshape(64, 128),
             "mtp.norm.weight": np.linspace(-1, 1, 64, dtype=np.float32)}
    save_file({**{k: np.ascontiguousarray(v) for k, v in t.items()}, **extra}, str(original_dir / "model.safetensors"))
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(t))
    status, _, err = cli("to-hf", "qwen3.5", path, "--hf_model", original_dir, "-o", tmp_path / "hf")
    assert status == 0, err
    got = exported(tmp_path / "hf")
    for name, values in extra.items():
        assert got[name].tobytes() == values.tobytes()
    assert got["model.visual.pos_embed.weight"].tobytes() == t["model.visual.pos_embed.weight"].tobytes()


def test_lora_adapters_become_a_peft_folder_under_the_originals_names(cli, tmp_path):
    t = original()
    model = ttml_model(t)
    rng = np.random.default_rng(4)
    adapted = {"layers/0/linear_attn/in_proj_qkv": LM + "layers.0.linear_attn.in_proj_qkv",
               "layers/1/self_attn/q_proj": LM + "layers.1.self_attn.q_proj",
               "layers/2/mlp/down_proj": LM + "layers.2.mlp.down_proj"}
    peft = {}
    wrapped = {"LoraModel/model/" + name: values for name, values in model.items()}
    for ttml_name, module in adapted.items():
        out, inner = t[module + ".weight"].shape
        a = (rng.normal(size=(4, inner)) * 0.1).astype(np.float32)
        b = (rng.normal(size=(out, 4)) * 0.1).astype(np.float32)
        wrapped[f"LoraModel/model/{ROOT}/{ttml_name}/lora_A"] = ts.four_d(a)
        wrapped[f"LoraModel/model/{ROOT}/{ttml_name}/lora_B"] = ts.four_d(b)
        peft[module] = (a, b)
    path = ts.write_stream(tmp_path / "lora.pkl", wrapped)
    status, _, err = cli("to-hf", "qwen3.5", path, "--hf_model", MODEL, "-o", tmp_path / "adapter",
                         "--lora-alpha", "8")
    assert status == 0, err
    lora_support.assert_peft_folder(tmp_path / "adapter", peft, 4, 8)
    status, _, err = cli("to-hf", "qwen3.5", path, "--hf_model", MODEL, "-o", tmp_path / "merged", "--lora-alpha", "8",
                         "--merge-lora")
    assert status == 0, err
    merged = exported(tmp_path / "merged")
    for module, (a, b) in peft.items():
        np.testing.assert_allclose(merged[module + ".weight"], t[module + ".weight"] + np.float32(8 / 4) * (b @ a),
                                   rtol=1e-6, atol=1e-7, err_msg=module)


def test_what_is_not_read_is_refused_in_one_line(cli, tmp_path):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original()))
    for command, says in ((["to-hf", "qwen3.5", path, "--hf_model", MODEL, "-o", tmp_path / "o", "--tp", "3"],
                           "do not split 3 ways"),
                          (["to-hf", "qwen3.5", path, "-o", tmp_path / "o"], "give --hf_model"),
                          (["config", "qwen3.5", "--hf_model", MODEL], "write a tt-train YAML")):
        status, _, err = cli(*command)
        assert status == 1 and one_error_line(err) and says in err, (command, err)
        assert not (tmp_path / "o").exists()


def test_there_is_no_conversion_command_into_tt_train(capsys):
    # tt-train's Qwen3.8 recipes load the Hugging Face checkpoint themselves
    from ttconv.cli import main

    with pytest.raises(SystemExit):
        main(["qwen3.5", "--hf_model", MODEL])
    assert "invalid choice: 'qwen3.5'" in capsys.readouterr().err


def test_tt_trains_own_adapter_file_of_it_becomes_a_peft_folder(cli, tmp_path):
    # lora_step_N.safetensors: the adapters alone; the original gives the shapes of the rest
    t = original()
    rng = np.random.default_rng(6)
    module = LM + "layers.0.linear_attn.in_proj_z"
    out, inner = t[module + ".weight"].shape
    a = (rng.normal(size=(8, inner)) * 0.1).astype(np.float32)
    b = (rng.normal(size=(out, 8)) * 0.1).astype(np.float32)
    name = f"LoraModel/model/{ROOT}/layers/0/linear_attn/in_proj_z"
    path = tmp_path / "lora_step_40.safetensors"
    save_file({f"{name}/lora_A": ts.four_d(a), f"{name}/lora_B": ts.four_d(b)}, str(path))
    status, _, err = cli("to-hf", "qwen38", path, "--hf_model", MODEL, "-o", tmp_path / "adapter", "--lora-alpha", "16")
    assert status == 0, err
    got = {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).reshape(shape) for name, (dtype, shape, data)
           in raw_safetensors(os.path.join(tmp_path / "adapter", "adapter_model.safetensors")).items()}
    assert np.array_equal(got[f"base_model.model.{module}.lora_A.weight"], a)
    assert np.array_equal(got[f"base_model.model.{module}.lora_B.weight"], b) and len(got) == 2


def expected_loss():
    with open(os.path.join(MODEL, "expected", "loss.json")) as f:
        return json.load(f)


def run_check(cli, path, *extra, model=MODEL):
    status, out, err = cli("check", "qwen3.5", path, "--hf_model", model, "--json", *extra)
    return status, (json.loads(out) if out else None), err


def test_hf_side_reproduces_transformers_logits():
    from ttconv import families
    from ttconv.hf.checkpoint import Checkpoint
    from ttconv.models import HfModel

    ids = np.load(os.path.join(MODEL, "expected", "ids.npy"))
    want = np.load(os.path.join(MODEL, "expected", "hf_logits.npy"))
    ckpt = Checkpoint(MODEL)
    family = families.get("qwen3.5")
    shape = family.model_shape(ckpt)
    model = HfModel(ckpt, family, shape, family.norm_epsilon(ckpt.config))
    logits = model.final_states(ids)[0] @ model.head_rows(0, shape.vocab_size).T
    assert support.rel_error(logits, want) < 1e-5


@pytest.mark.parametrize("tp", [1, 2])
def test_check_reproduces_transformers_loss(cli, tmp_path, tp):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original(), tp), header={"step": 3})
    status, result, err = run_check(cli, path, *(["--tp", str(tp)] if tp > 1 else []))
    assert status == 0, err
    want = expected_loss()
    assert result["ok"] and result["top1_agreement"] == 1.0 and result["tokens"] == want["sample_tokens"]
    assert abs(result["hf_loss"] - want["sample_loss"]) < 1e-4
    assert abs(result["tt_loss"] - want["sample_loss"]) < 1e-4
    assert result["max_abs_logit_diff"] < 1e-4


def test_check_of_a_bfloat16_file_compares_with_the_checkpoint_rounded(cli, tmp_path):
    path = ts.write_stream(tmp_path / "run.pkl", ts.as_bf16(ttml_model(original())))
    status, result, err = run_check(cli, path)
    assert status == 0 and result["ok"] and result["hf_weights_rounded_to_bfloat16"], err


def wrong(model, what):
    """The model with one thing held as tt-train does not hold it."""
    model = dict(model)
    for name in list(model):
        if what == "norms without the one" and name.endswith(("input_layernorm/weight", "q_norm/weight")):
            model[name] = model[name] - np.float32(1)
        elif what == "taps reversed" and "/conv_tap_" in name:
            j = int(name.rsplit("_", 1)[1])
            model[name] = model[name.rsplit("_", 1)[0] + f"_{3 - j}"]
        elif what == "gated norm plus one" and name.endswith("linear_attn/norm_weight"):
            model[name] = model[name] + np.float32(1)
    return model


@pytest.mark.parametrize("what", ["norms without the one", "taps reversed", "gated norm plus one"])
def test_check_fails_on_a_file_that_holds_another_model(cli, tmp_path, what):
    path = ts.write_stream(tmp_path / "run.pkl", wrong(ttml_model(original()), what))
    status, result, err = run_check(cli, path)
    assert status == 1 and not result["ok"] and one_error_line(err), err
    assert result["max_abs_logit_diff"] > 1e-3


def test_a_gathered_file_read_without_its_tp_is_told_apart(cli, tmp_path):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original(), 2))
    status, result, err = run_check(cli, path)
    assert status == 1 and not result["ok"] and "try --tp N" in err


def test_a_tensor_parallel_file_exports_as_the_single_device_one(cli, tmp_path, backend):
    t = original()
    one = ts.write_stream(tmp_path / "one.pkl", ttml_model(t))
    two = ts.write_stream(tmp_path / "two.pkl", ttml_model(t, 2))
    assert cli("to-hf", "qwen3.5", one, "--hf_model", MODEL, "-o", tmp_path / "hf1")[0] == 0
    status, _, err = cli("to-hf", "qwen3.5", two, "--hf_model", MODEL, "-o", tmp_path / "hf2", "--tp", "2")
    assert status == 0, err
    got, want = exported(tmp_path / "hf2"), expected(t, False)
    for name, values in want.items():
        assert got[name].tobytes() == values.tobytes(), name
    assert cli("to-hf", "qwen3.5", two, "--hf_model", MODEL, "-o", tmp_path / "hf3")[0] == 0
    qkv = LM + "layers.0.linear_attn.in_proj_qkv.weight"
    assert exported(tmp_path / "hf3")[qkv].tobytes() != want[qkv].tobytes()  # read without --tp: rows reordered


def test_a_lora_file_is_checked_merged(cli, tmp_path):
    t = original()
    rng = np.random.default_rng(8)
    wrapped = {"LoraModel/model/" + name: values for name, values in ttml_model(t, 2).items()}
    merged = dict(t)
    for ttml_name, module in (("layers/0/linear_attn/in_proj_qkv", LM + "layers.0.linear_attn.in_proj_qkv"),
                              ("layers/1/self_attn/o_proj", LM + "layers.1.self_attn.o_proj")):
        out, inner = t[module + ".weight"].shape
        a = (rng.normal(size=(4, inner)) * 0.3).astype(np.float32)
        b = (rng.normal(size=(out, 4)) * 0.3).astype(np.float32)
        merged[module + ".weight"] = t[module + ".weight"] + np.float32(16 / 4) * (b @ a)
        held_b = b[qkv_order(2)] if module.endswith("in_proj_qkv") else b  # the linear's own row order
        wrapped[f"LoraModel/model/{ROOT}/{ttml_name}/lora_A"] = ts.four_d(a)
        wrapped[f"LoraModel/model/{ROOT}/{ttml_name}/lora_B"] = ts.four_d(held_b)
    folder = tmp_path / "merged"
    shutil.copytree(MODEL, folder)
    save_file({k: np.ascontiguousarray(v) for k, v in merged.items()}, str(folder / "model.safetensors"))
    path = ts.write_stream(tmp_path / "lora.pkl", wrapped)
    status, result, err = run_check(cli, path, "--tp", "2", "--lora-alpha", "16", model=folder)
    assert status == 0 and result["ok"], err
    status, result, err = run_check(cli, path, "--tp", "2", "--lora-alpha", "16")
    assert status == 1 and not result["ok"]  # against the base model


def test_inspect_names_the_tensors_tensor_parallelism_reorders(cli, tmp_path):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original(), 2))
    status, out, err = cli("inspect", path)
    assert status == 0, err
    assert "fused tensors: conv_tap_J, in_proj_qkv (rank-interleaved" in out
