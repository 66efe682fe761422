"""tt-train's own LoRA adapter files (lora_step_N.safetensors of its LoRA recipes: the adapters alone,
4-D float32 under full ttml names, no alpha) to PEFT adapter folders, against adapters drawn in
Hugging Face's terms (lora_support)."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import lora_support as ls
import ttml_support as ts
from test_check import TRAINED, one_error_line
from test_lora import RANK, assert_adapter
from test_ttml import CONFIGS, TENSORS

# what train_lora_llama.py adapts (LORA_TARGET_MODULES) in the fused Llama it trains
RECIPE_TARGETS = ("qkv_linear", "out_linear")


def adapter_file(tmp_path, family, scheme, class_name, targets=RECIPE_TARGETS, step=120):
    """The adapters a recipe's LoraModel trains, saved as train_lora_llama.py saves them: every trainable
    parameter under its full name, float32 (the frozen weights are not in the file)."""
    cfg, t = CONFIGS[family], TENSORS[family]
    tt_adapters, peft = ls.draw(family, scheme, cfg, t, RANK, targets=targets)
    base = ts.llama_model(cfg, t, fused=scheme == "fused") if family == "llama" else ts.qwen3_model(cfg, t, scheme)
    model = ls.ttml_lora_model(base, tt_adapters, "Llama" if family == "llama" else "Qwen3", class_name)
    trainable = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in model.items()
                 if name.endswith(("/lora_A", "/lora_B"))}
    path = tmp_path / f"lora_step_{step}.safetensors"
    save_file(trainable, str(path))
    return path, peft


@pytest.mark.parametrize("family,scheme,class_name,targets", [
    ("llama", "fused", True, RECIPE_TARGETS),    # the recipe as it is
    ("llama", "fused", False, None),             # every linear, fused q|k|v and gate|up
    ("llama", "unfused", True, ("q_linear", "kv_linear")),
    ("qwen3", "kv", True, None),
])
def test_an_adapter_file_becomes_a_peft_folder(cli, tmp_path, family, scheme, class_name, targets):
    path, peft = adapter_file(tmp_path, family, scheme, class_name, targets)
    model = os.path.join(TRAINED, family)
    status, _, err = cli("to-hf", family, path, "--hf_model", model, "-o", tmp_path / "adapter", "--lora-alpha", "16")
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert_adapter(tmp_path / "adapter", peft)
    config = json.load(open(tmp_path / "adapter" / "adapter_config.json"))
    assert config["r"] == RANK and config["lora_alpha"] == 16 and config["base_model_name_or_path"] == model
    assert config["target_modules"] == sorted({m.rsplit(".", 1)[-1] for m in peft})


def test_an_adapter_file_needs_alpha_and_the_original(cli, tmp_path):
    path, _ = adapter_file(tmp_path, "llama", "fused", True)
    model = os.path.join(TRAINED, "llama")
    out = tmp_path / "out"
    for command, says in ((["to-hf", "llama", path, "--hf_model", model, "-o", out], "--lora-alpha"),
                          (["to-hf", "llama", path, "-o", out, "--lora-alpha", "16"], "--hf_model"),
                          (["to-hf", "llama", path, "--hf_model", model, "-o", out, "--lora-alpha", "16",
                            "--merge-lora"], "holds only LoRA adapters"),
                          (["check", "llama", path, "--hf_model", model, "--lora-alpha", "16"],
                           "holds only LoRA adapters"),
                          (["to-hf", "llama", path, "--hf_model", model, "-o", out, "--lora-alpha", "16", "--tp", "2"],
                           "LoRA adapter file")):
        status, _, err = cli(*command)
        assert status == 1 and one_error_line(err) and says in err, (command, err)
        assert not out.exists()


def test_an_adapter_file_of_another_model_is_refused(cli, tmp_path):
    path, _ = adapter_file(tmp_path, "llama", "fused", True)
    for family, says in (("llama", "is a 'qwen3' checkpoint, not Llama"),
                         ("qwen3", "holds the adapters of a Llama model (Llama/); use 'ttconv to-hf llama'")):
        status, _, err = cli("to-hf", family, path, "--hf_model", os.path.join(TRAINED, "qwen3"), "-o",
                             tmp_path / "out", "--lora-alpha", "16")
        assert status == 1 and one_error_line(err) and says in err, err
        assert not (tmp_path / "out").exists()


def test_inspect_names_an_adapter_file(cli, tmp_path):
    path, peft = adapter_file(tmp_path, "llama", "fused", True)
    status, out, _ = cli("inspect", path)
    assert status == 0, out
    assert out.startswith("kind: tt-train LoRA adapter file: Llama model under Llama/ (step 120)")
    assert "LoRA model: rank 8, 4 adapted linears (attention/out_linear, attention/qkv_linear)" in out
    assert "--lora-alpha" in out and "--merge-lora" not in out
    status, out, _ = cli("inspect", path, "--json")
    info = json.loads(out)
    assert info["family"] == "llama" and info["lora"]["ranks"] == [RANK]
    assert info["lora"]["adapter_parameters"] == sum(a.size + b.size for a, b in peft.values()) - sum(
        a.size for module, (a, _) in peft.items() if module.endswith(("k_proj", "v_proj")))  # qkv shares one A
