"""DeepSeek out of tt-train's Python side: ttml checkpoints as ttml's DeepSeek holds the model (one module
per expert, or the expert-parallel stacks), exported against the tiny DeepSeek-V2 (softmax routing,
no q LoRA) and V3 (sigmoid, q LoRA, expert groups) checkpoints transformers wrote
(fixtures/deepseek_v2-mini, deepseek_v3-mini); the expected tensors are the originals."""
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import support
import ttml_support as ts
from test_check import one_error_line
from test_export_hf import raw_safetensors

ROOT = "DeepSeek"
MODELS = {v: os.path.join(support.FIXTURES, f"deepseek_{v}-mini") for v in ("v2", "v3")}
# Hugging Face's module names within a layer -> ttml's (mla.py, transformer.py, moe.py)
ATTENTION = {"q_proj": "wq", "q_a_proj": "wq_a", "q_b_proj": "wq_b", "kv_a_proj_with_mqa": "wkv_a",
             "kv_b_proj": "wkv_b", "o_proj": "wo"}
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
         "self_attn.q_a_layernorm": "attn/q_norm", "self_attn.kv_a_layernorm": "attn/kv_norm"}
SWIGLU = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def original(version):
    path = os.path.join(MODELS[version], "model.safetensors")
    return {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).reshape(shape)
            for name, (dtype, shape, data) in raw_safetensors(path).items()}


def config(version):
    with open(os.path.join(MODELS[version], "config.json")) as f:
        return json.load(f)


def ttml_name(name):
    """ttml's name of a Hugging Face tensor (None: not in ttml's model)."""
    if name == "model.embed_tokens.weight":
        return f"{ROOT}/tok_emb/weight"
    if name == "lm_head.weight":
        return f"{ROOT}/head/weight"
    if name == "model.norm.weight":
        return f"{ROOT}/norm/gamma"
    layer, rest = name[len("model.layers."):].split(".", 1)
    block = f"{ROOT}/blocks/{layer}/"
    module = rest[:-len(".weight")]
    if module in NORMS:
        return block + NORMS[module] + "/gamma"
    if module.startswith("self_attn."):
        return block + "attn/" + ATTENTION[module.split(".")[1]] + "/weight"
    if module == "mlp.gate":
        return block + "ffn/gate/weight"
    if rest.endswith("e_score_correction_bias"):
        return None
    parts = module.split(".")
    inner = "/".join(parts[1:-1])
    return block + "ffn/" + (inner + "/" if inner else "") + SWIGLU[parts[-1]] + "/weight"


def ttml_model(t, ep=None):
    """{ttml name: 4-D float32} as ttml's DeepSeek holds the checkpoint t; ep: the expert-parallel
    stacks over that many devices instead of a module per expert."""
    out = {}
    for name, w in t.items():
        target = ttml_name(name)
        if target is None:
            continue
        w = w.astype(np.float32)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            w = ts.pad_vocab(w)
        if ep and "/experts/" in target:
            continue
        out[target] = ts.four_d(w)
    if ep:
        experts = config_experts(t)
        for layer, count in experts.items():
            local = count // ep
            for j in range(local):
                for stacked, hf in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
                    slices = [t[f"model.layers.{layer}.mlp.experts.{r * local + j}.{hf}.weight"] for r in range(ep)]
                    out[f"{ROOT}/blocks/{layer}/ffn/{stacked}_{j}"] = np.stack(slices)[:, None].astype(np.float32)
    return out


def config_experts(t):
    """{layer: routed experts} of the MoE layers of a checkpoint."""
    found = {}
    for name in t:
        if ".mlp.experts." in name:
            layer, expert = int(name.split(".")[2]), int(name.split(".")[5])
            found[layer] = max(found.get(layer, 0), expert + 1)
    return found


def exported(folder):
    return {name: np.frombuffer(data, dtype=ts.RAW_DTYPES[dtype]).reshape(shape)
            for name, (dtype, shape, data) in raw_safetensors(os.path.join(folder, "model.safetensors")).items()}


def header_of(version, nested=False):
    """A header as train.py saves it: model_builders' _DeepSeekSpec with its MoE fields flat, or (nested)
    the newer DeepSeekSpec holding them in a MoEParams."""
    cfg = config(version)

    def build(classes):
        moe = dict(
            moe_inter_dim=cfg["moe_intermediate_size"], n_routed_experts=cfg["n_routed_experts"],
            n_shared_experts=cfg["n_shared_experts"], n_activated_experts=cfg["num_experts_per_tok"],
            n_expert_groups=cfg["n_group"], n_limited_groups=cfg["topk_group"],
            score_func="sigmoid" if version == "v3" else "softmax", route_scale=cfg["routed_scaling_factor"])
        common = dict(
            theta=cfg["rope_parameters"]["rope_theta"], inter_dim=cfg["intermediate_size"],
            n_dense_layers=cfg["first_k_dense_replace"], q_lora_rank=cfg["q_lora_rank"] or 0,
            kv_lora_rank=cfg["kv_lora_rank"], qk_nope_head_dim=cfg["qk_nope_head_dim"],
            qk_rope_head_dim=cfg["qk_rope_head_dim"], v_head_dim=cfg["v_head_dim"])
        if nested:
            spec = classes.NestedDeepSeekSpec(**common, moe_hyperparam=classes.MoEParams(**moe))
        else:
            spec = classes.DeepSeekSpec(**common, **moe)
        model = classes.ModelConfig("deepseek", "", cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"],
                                    cfg["num_attention_heads"], 0.0, cfg["max_position_embeddings"],
                                    classes.RunnerType.Default, classes.WeightTyingType.Disabled, spec)
        return {"step": 20, "tokenizer": None, "model_config": model}

    return build


@pytest.mark.parametrize("ep", [None, 2, 4])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_run_exports_to_the_originals_tensors(cli, tmp_path, version, ep, backend):
    t = original(version)
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(t, ep), header={"step": 5})
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", MODELS[version], "-o", tmp_path / "hf")
    assert status == 0, err
    got = exported(tmp_path / "hf")
    assert set(got) == set(t)
    for name, values in t.items():
        assert got[name].dtype == values.dtype and got[name].tobytes() == values.tobytes(), name


def test_a_bfloat16_run_exports_in_bfloat16(cli, tmp_path):
    t = original("v3")
    path = ts.write_stream(tmp_path / "run.pkl", ts.as_bf16(ttml_model(t, 2)))
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", MODELS["v3"], "-o", tmp_path / "hf")
    assert status == 0, err
    got = exported(tmp_path / "hf")
    for name, values in t.items():
        assert got[name].tobytes() == values.astype(ml_dtypes.bfloat16).tobytes(), name


def test_the_router_bias_comes_back_from_the_original(cli, tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v3"], folder)
    t = dict(original("v3"))
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    t[bias] = np.linspace(-0.5, 0.5, t[bias].size, dtype=np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(folder / "model.safetensors"))
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(t))
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", folder, "-o", tmp_path / "hf")
    assert status == 0, err
    assert exported(tmp_path / "hf")[bias].tobytes() == t[bias].tobytes()


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_without_the_original_the_config_comes_from_the_header(cli, tmp_path, version, nested):
    t = original(version)
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(t, 2), header_of=header_of(version, nested))
    status, _, err = cli("to-hf", "deepseek", path, "-o", tmp_path / "hf")
    assert status == 0, err
    got, want = exported(tmp_path / "hf"), config(version)
    written = json.load(open(tmp_path / "hf" / "config.json"))
    assert written["architectures"] == want["architectures"] and written["model_type"] == want["model_type"]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                "num_attention_heads", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
                "first_k_dense_replace", "n_group", "topk_group", "routed_scaling_factor", "q_lora_rank",
                "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rms_norm_eps",
                "max_position_embeddings", "norm_topk_prob", "tie_word_embeddings"):
        assert written[key] == want[key], key
    # every tensor the file holds, the router bias (which ttml never saves) left out
    assert set(got) == {n for n in t if not n.endswith("e_score_correction_bias")}
    for name in got:
        assert got[name].tobytes() == t[name].tobytes(), name


@pytest.mark.parametrize("change, says", [
    ({"rms_norm_eps": 1e-6}, "rms_norm_eps 1e-06"),
    ({"norm_topk_prob": False}, "norm_topk_prob false"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "'yarn'"),
])
def test_what_ttml_computes_otherwise_is_refused_naming_the_field(cli, tmp_path, change, says):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v3"], folder)
    cfg = dict(config("v3"), **change)
    with open(folder / "config.json", "w") as f:
        json.dump(cfg, f)
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original("v3")))
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", folder, "-o", tmp_path / "hf")
    assert status == 1 and one_error_line(err) and says in err, err
    assert not (tmp_path / "hf").exists()


def test_a_stack_that_is_not_one_is_refused(cli, tmp_path):
    model = ttml_model(original("v2"), 2)
    model[f"{ROOT}/blocks/1/ffn/w_gate_0"] = model[f"{ROOT}/blocks/1/ffn/w_gate_0"][0]  # a 3-D array
    path = ts.write_stream(tmp_path / "run.pkl", model)
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", MODELS["v2"], "-o", tmp_path / "hf")
    assert status == 1 and one_error_line(err) and "is not an expert-parallel stack" in err, err


def test_inspect_names_the_family(cli, tmp_path):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original("v3"), 2))
    status, out, err = cli("inspect", path)
    assert status == 0, err
    assert "DeepSeek model under DeepSeek/" in out and "family: DeepSeek (ttconv deepseek)" in out
    assert "blocks/1/ffn/w_gate_0" in out and "2x1x32x64" in out


def test_what_is_not_built_yet_is_refused_in_one_line(cli, tmp_path):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original("v2")))
    for command, says in ((["check", "deepseek", path, "--hf_model", MODELS["v2"]], "run check"),
                          (["config", "deepseek", "--hf_model", MODELS["v2"]], "write a tt-train YAML")):
        status, _, err = cli(*command)
        assert status == 1 and one_error_line(err) and says in err, (command, err)
