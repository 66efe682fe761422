"""LoRA checkpoints (ttml streams and SFT pickles, C++ directories and msgpack) to PEFT adapter
folders and merged checkpoints, against adapters drawn in Hugging Face's terms (lora_support)."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

import lora_support as ls
import support
import ttml_support as ts
from test_check import TRAINED, one_error_line, trained
from test_export_hf import raw_safetensors
from test_ttml import CONFIGS, TENSORS

RANK = 8


def adapter_values(folder):
    return {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).astype(np.float32).reshape(shape)
            for name, (dtype, shape, data) in raw_safetensors(os.path.join(folder, "adapter_model.safetensors")).items()}


def assert_adapter(folder, peft, bf16=False):
    got = adapter_values(folder)
    expected = {}
    for module, (a, b) in peft.items():
        expected[f"base_model.model.{module}.lora_A.weight"] = a
        expected[f"base_model.model.{module}.lora_B.weight"] = b
    assert set(got) == set(expected)
    for name, values in expected.items():
        want = values.astype(ml_dtypes.bfloat16).astype(np.float32) if bf16 else values
        assert got[name].shape == want.shape and np.array_equal(got[name], want), name


def ttml_lora(tmp_path, family, scheme, sft=False, class_name=False, bf16=False, header=None, protocol=4):
    name = family
    cfg, t = CONFIGS[name], TENSORS[name]
    tt_adapters, peft = ls.draw(family, scheme, cfg, t, RANK)
    if family == "llama":
        base = ts.llama_model(cfg, t, fused=scheme == "fused", order="module")
    else:
        base = ts.qwen3_model(cfg, t, scheme, order="module")
    model = ls.ttml_lora_model(base, tt_adapters, "Llama" if family == "llama" else "Qwen3", class_name,
                               "model/layers" if scheme == "hf" else "blocks")
    if bf16:
        model = ts.as_bf16(model)
    path = tmp_path / ("step_9.pkl" if sft else "lora.pkl")
    if sft:
        ts.write_sft(path, model, protocol=protocol)
    else:
        ts.write_stream(path, model, header=header or {"step": 9}, protocol=protocol)
    return path, peft


CASES = [("llama", "unfused", False, False), ("llama", "fused", False, True), ("llama", "fused", True, False),
         ("qwen3", "unfused", False, False), ("qwen3", "kv", False, True), ("qwen3", "kv", True, False),
         ("qwen3", "hf", False, False)]


@pytest.mark.parametrize("family,scheme,sft,bf16", CASES)
def test_ttml_lora_to_a_peft_adapter(cli, tmp_path, family, scheme, sft, bf16):
    path, peft = ttml_lora(tmp_path, family, scheme, sft=sft, class_name=scheme == "fused", bf16=bf16)
    model = os.path.join(TRAINED, family)
    status, _, err = cli("to-hf", family, path, "--hf_model", model, "-o", tmp_path / "adapter", "--lora-alpha", "16")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_adapter(tmp_path / "adapter", peft, bf16)
    config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["r"] == RANK
    assert config["lora_alpha"] == 16 and config["use_rslora"] is False and config["bias"] == "none"
    assert config["fan_in_fan_out"] is False and config["base_model_name_or_path"] == model
    assert config["target_modules"] == sorted({m.rsplit(".", 1)[-1] for m in peft})


@pytest.mark.parametrize("family,fmt", [("llama", "dir"), ("qwen3", "dir"), ("llama", "msgpack")])
def test_cpp_lora_to_a_peft_adapter(cli, tmp_path, family, fmt):
    cfg, t = CONFIGS[family], TENSORS[family]
    tt_adapters, peft = ls.draw(family, "c++", cfg, t, 4)
    if fmt == "dir":
        path = ls.write_cpp_dir(tmp_path / "dir", family, cfg, t, tt_adapters)
    else:
        path = ls.write_cpp_msgpack(tmp_path / "lora.msgpack", cfg, t, tt_adapters)
    status, _, err = cli("to-hf", family, path, "--hf_model", os.path.join(TRAINED, family), "-o",
                         tmp_path / "adapter", "--lora-alpha", "8", "--rslora")
    assert status == 0, err
    assert_adapter(tmp_path / "adapter", peft)
    config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    assert config["r"] == 4 and config["use_rslora"] is True
    status, out, _ = cli("inspect", path, "--json")
    lora = json.loads(out)["lora"]
    assert lora["ranks"] == [4] and lora["adapted_linears"] == len(tt_adapters)
    assert lora["adapter_parameters"] == sum(a.size + b.size for a, b in tt_adapters.values())


@pytest.mark.parametrize("family,scheme,rslora", [("llama", "fused", False), ("qwen3", "kv", True),
                                                  ("llama", "c++", False)])
def test_merged_checkpoint_and_check(cli, tmp_path, family, scheme, rslora):
    cfg, t = CONFIGS[family], TENSORS[family]
    alpha = 16.0
    rank = RANK if scheme != "c++" else 4
    scale = alpha / np.sqrt(rank) if rslora else alpha / rank
    if scheme == "c++":
        tt_adapters, peft = ls.draw(family, scheme, cfg, t, rank)
        path = ls.write_cpp_dir(tmp_path / "dir", family, cfg, t, tt_adapters)
    else:
        path, peft = ttml_lora(tmp_path, family, scheme)
    flags = ["--lora-alpha", str(alpha)] + (["--rslora"] if rslora else [])
    model = os.path.join(TRAINED, family)
    status, _, err = cli("to-hf", family, path, "--hf_model", model, "-o", tmp_path / "merged", "--merge-lora",
                         "--max-shard-size", "200KB", *flags)
    assert status == 0, err
    truth = ls.merged(t, peft, scale)  # numpy, in Hugging Face's terms
    index = json.load(open(tmp_path / "merged" / "model.safetensors.index.json"))
    got = {}
    for shard in sorted(set(index["weight_map"].values())):
        got.update({k: np.frombuffer(d, dtype=ts.RAW_DTYPES[dt]).reshape(s) for k, (dt, s, d)
                    in raw_safetensors(os.path.join(tmp_path / "merged", shard)).items()})
    assert set(got) == set(truth)
    for name, values in truth.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-6, atol=1e-7, err_msg=name)
    # the merged truth as a checkpoint: check runs the LoRA file merged beside it
    reference = tmp_path / "truth"
    support.write_checkpoint(reference, cfg, truth)
    shutil.copy(os.path.join(model, "tokenizer.json"), reference)
    status, out, err = cli("check", family, path, "--hf_model", reference, "--json", *flags)
    result = json.loads(out)
    assert status == 0 and result["ok"], err
    assert result["tt_loss"] == pytest.approx(result["hf_loss"], rel=1e-4)
    assert abs(result["hf_loss"] - trained(family)[1]["sample_loss"]) > 1e-3  # the adapters change the model
    status, out, _ = cli("check", family, path, "--hf_model", reference, "--json", "--lora-alpha", str(alpha * 2))
    assert status == 1 and not json.loads(out)["ok"]  # a wrong alpha is a different model


def test_alpha_is_required_unless_recorded(cli, tmp_path):
    path, peft = ttml_lora(tmp_path, "llama", "unfused")
    model = os.path.join(TRAINED, "llama")
    for command in (["to-hf", "llama", path, "--hf_model", model, "-o", tmp_path / "out"],
                    ["to-hf", "llama", path, "--hf_model", model, "-o", tmp_path / "out", "--merge-lora"],
                    ["check", "llama", path, "--hf_model", model]):
        status, _, err = cli(*command)
        assert status == 1 and one_error_line(err) and "--lora-alpha" in err, err
        assert not (tmp_path / "out").exists()
    # a header that records its LoraConfig's fields
    path, _ = ttml_lora(tmp_path, "llama", "unfused", header={"step": 1, "lora": {"rank": RANK, "alpha": 32.0,
                                                                                  "use_rslora": True}})
    status, _, err = cli("to-hf", "llama", path, "--hf_model", model, "-o", tmp_path / "out")
    assert status == 0, err
    config = json.load(open(tmp_path / "out" / "adapter_config.json"))
    assert config["lora_alpha"] == 32.0 and config["use_rslora"] is True


def test_lora_options_on_a_file_without_adapters_are_refused(cli, tmp_path):
    path = ts.write_stream(tmp_path / "plain.pkl", ts.llama_model(CONFIGS["llama"], TENSORS["llama"]))
    status, _, err = cli("to-hf", "llama", path, "-o", tmp_path / "out", "--hf_model", os.path.join(TRAINED, "llama"),
                         "--merge-lora")
    assert status == 1 and one_error_line(err) and "holds no LoRA adapters" in err


def test_an_adapter_export_replaces_an_earlier_one(cli, tmp_path):
    path, peft = ttml_lora(tmp_path, "qwen3", "kv")
    model = os.path.join(TRAINED, "qwen3")
    for alpha in ("8", "16"):
        status, _, err = cli("to-hf", "qwen3", path, "--hf_model", model, "-o", tmp_path / "out", "--lora-alpha", alpha)
        assert status == 0, err
    assert json.load(open(tmp_path / "out" / "adapter_config.json"))["lora_alpha"] == 16


def test_inspect_says_lora(cli, tmp_path):
    path, peft = ttml_lora(tmp_path, "llama", "fused")
    status, out, _ = cli("inspect", path)
    assert status == 0 and "LoRA model: rank 8, 8 adapted linears" in out and "attention/qkv_linear" in out


def test_gpt2_lora_on_some_conv1d_layers(cli, tmp_path):
    cfg, t = CONFIGS["gpt2"], TENSORS["gpt2"]
    rng = np.random.default_rng(1)
    model, peft = {}, {}
    for name, values in ts.nanogpt_model(cfg, t).items():
        model[name] = values
        if name.endswith(("attention/qkv_linear/weight", "mlp/fc2/weight")):
            out, inner = values.shape[2:]
            a, b = (rng.normal(size=(4, inner)) * 0.1).astype(np.float32), (rng.normal(size=(out, 4)) * 0.1).astype(np.float32)
            model[name[:-len("weight")] + "lora_A"], model[name[:-len("weight")] + "lora_B"] = ts.four_d(a), ts.four_d(b)
            layer, kind = name.split("/")[2], name.split("/")[3]
            peft[f"transformer.h.{layer}.{'attn.c_attn' if kind == 'attention' else 'mlp.c_proj'}"] = (a, b)
    path = ts.write_stream(tmp_path / "gpt2.pkl", {"LoraModel/model/" + k[len("NanoGPT/"):]: v for k, v in model.items()})
    model_dir = os.path.join(TRAINED, "gpt2")
    status, _, err = cli("to-hf", "gpt2", path, "--hf_model", model_dir, "-o", tmp_path / "adapter", "--lora-alpha", "8")
    assert status == 0, err
    assert_adapter(tmp_path / "adapter", peft)
    config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    # mlp.c_proj, not c_proj: attn.c_proj is not adapted
    assert config["target_modules"] == ["c_attn", "mlp.c_proj"] and config["fan_in_fan_out"] is True
    status, _, err = cli("to-hf", "gpt2", path, "--hf_model", model_dir, "-o", tmp_path / "merged", "--lora-alpha", "8",
                         "--merge-lora")
    assert status == 0, err
    got = {k: np.frombuffer(d, np.float32).reshape(s)
           for k, (dt, s, d) in raw_safetensors(os.path.join(tmp_path / "merged", "model.safetensors")).items()}
    for module, (a, b) in peft.items():
        key = next(k for k in t if k.endswith(module[len("transformer."):] + ".weight"))
        np.testing.assert_allclose(got[key], t[key] + (2.0 * (b @ a)).T, rtol=1e-6, atol=1e-7)  # Conv1D: [in, out]


def test_a_fused_part_that_was_not_adapted_is_left_out(cli, tmp_path):
    """PEFT's usual targets (q_proj, v_proj) held in a fused kv linear: its k rows of lora_B are zero."""
    cfg, t = CONFIGS["qwen3"], TENSORS["qwen3"]
    tt_adapters, peft = ls.draw("qwen3", "kv", cfg, t, RANK, targets=("q_proj", "kv_proj"))
    for (i, linear), (a, b) in tt_adapters.items():
        if linear == "self_attn/kv_proj":
            b[:b.shape[0] // 2] = 0  # no k adapter
            del peft[f"model.layers.{i}.self_attn.k_proj"]
    model = ls.ttml_lora_model(ts.qwen3_model(cfg, t, "kv"), tt_adapters, "Qwen3")
    path = ts.write_sft(tmp_path / "step_3.pkl", model)
    status, _, err = cli("to-hf", "qwen3", path, "--hf_model", os.path.join(TRAINED, "qwen3"), "-o", tmp_path / "a",
                         "--lora-alpha", "16")
    assert status == 0, err
    assert_adapter(tmp_path / "a", peft)
    assert json.load(open(tmp_path / "a" / "adapter_config.json"))["target_modules"] == ["q_proj", "v_proj"]


def test_adapter_dtype_follows_the_file_or_dtype(cli, tmp_path):
    path, peft = ttml_lora(tmp_path, "llama", "unfused", bf16=True)
    model = os.path.join(TRAINED, "llama")
    status, _, err = cli("to-hf", "llama", path, "--hf_model", model, "-o", tmp_path / "f32", "--lora-alpha", "4",
                         "--dtype", "f32")
    assert status == 0, err
    dtypes = {dt for dt, _, _ in raw_safetensors(os.path.join(tmp_path / "f32", "adapter_model.safetensors")).values()}
    assert dtypes == {"F32"}
    assert_adapter(tmp_path / "f32", peft, bf16=True)  # bf16 values widened exactly
