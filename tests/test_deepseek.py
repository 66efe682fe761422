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

import lora_support
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
    # every tensor the file holds; V3's router bias, which ttml never saves, as the zeros ttml routes with
    assert set(got) == set(t)
    for name in got:
        if name.endswith("e_score_correction_bias"):
            assert got[name].shape == (want["n_routed_experts"],) and not got[name].any(), name
        else:
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
    cfg = config("v3")
    assert (f"mixture of experts: {cfg['num_hidden_layers'] - cfg['first_k_dense_replace']} layers of "
            f"{cfg['n_routed_experts']} routed experts (inner size {cfg['moe_intermediate_size']}), shared experts' "
            f"inner size {cfg['moe_intermediate_size'] * cfg['n_shared_experts']}, 1 dense layer; expert-parallel "
            "stacks over 2 devices") in out
    path = ts.write_stream(tmp_path / "dense.pkl", ttml_model(original("v3")))
    assert "; one module per expert (ffn/experts/E)" in cli("inspect", path)[1]


def test_what_is_not_built_yet_is_refused_in_one_line(cli, tmp_path):
    status, _, err = cli("config", "deepseek", "--hf_model", MODELS["v2"])
    assert status == 1 and one_error_line(err) and "write a tt-train YAML" in err, err


# ---------------------------------------------------------------- check: MLA and the mixture of experts


def expected(version, name):
    folder = os.path.join(MODELS[version], "expected")
    if name == "loss":
        with open(os.path.join(folder, "loss.json")) as f:
            return json.load(f)
    return np.load(os.path.join(folder, f"{name}.npy"))


def run_check(cli, path, version, *extra, model=None):
    status, out, err = cli("check", "deepseek", path, "--hf_model", model or MODELS[version], "--json", *extra)
    return status, (json.loads(out) if out else None), err


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_hf_side_reproduces_transformers_logits(version):
    from ttconv import families
    from ttconv.hf.checkpoint import Checkpoint
    from ttconv.models import HfModel

    ckpt = Checkpoint(MODELS[version])
    family = families.get("deepseek")
    shape = family.model_shape(ckpt)
    model = HfModel(ckpt, family, shape, family.norm_epsilon(ckpt.config))
    logits = model.final_states(expected(version, "ids"))[0] @ model.head_rows(0, shape.vocab_size).T
    assert support.rel_error(logits, expected(version, "hf_logits")) < 1e-5


@pytest.mark.parametrize("ep", [None, 2])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_check_reproduces_transformers_loss(cli, tmp_path, version, ep):
    path = ts.write_stream(tmp_path / "run.pkl", ttml_model(original(version), ep), header={"step": 3})
    status, result, err = run_check(cli, path, version)
    assert status == 0, err
    want = expected(version, "loss")
    assert result["ok"] and result["top1_agreement"] == 1.0 and result["tokens"] == want["sample_tokens"]
    assert abs(result["hf_loss"] - want["sample_loss"]) < 1e-4
    assert abs(result["tt_loss"] - want["sample_loss"]) < 1e-4


def test_check_of_a_bfloat16_file_compares_with_the_checkpoint_rounded(cli, tmp_path):
    assert cli("deepseek", "--hf_model", MODELS["v3"], "-o", tmp_path / "run.pkl", "--ep", 4)[0] == 0
    status, result, err = run_check(cli, tmp_path / "run.pkl", "v3")
    assert status == 0 and result["ok"] and result["hf_weights_rounded_to_bfloat16"], err
    assert abs(result["tt_loss"] - result["hf_loss"]) < 1e-3


@pytest.mark.parametrize("what", ["experts swapped", "kv_norm from q_norm", "no shared experts"])
def test_check_fails_on_a_file_that_holds_another_model(cli, tmp_path, what):
    model = ttml_model(original("v3"))
    block = f"{ROOT}/blocks/1/"
    if what == "experts swapped":
        for linear in ("w1", "w2", "w3"):
            one, other = f"{block}ffn/experts/0/{linear}/weight", f"{block}ffn/experts/5/{linear}/weight"
            model[one], model[other] = model[other], model[one]
    elif what == "kv_norm from q_norm":
        model[f"{block}attn/kv_norm/gamma"] = model[f"{block}attn/kv_norm/gamma"] * 3
    else:
        for linear in ("w1", "w3"):
            model[f"{block}ffn/shared_experts/{linear}/weight"] = np.zeros_like(
                model[f"{block}ffn/shared_experts/{linear}/weight"])
    status, result, err = run_check(cli, ts.write_stream(tmp_path / "run.pkl", model), "v3")
    assert status == 1 and not result["ok"], (what, result)


def test_check_shows_what_allow_lossy_changed(cli, tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v3"], folder)
    t = dict(original("v3"))
    for layer in (1, 2):  # a router bias that moves the choice: experts 6 and 7 always
        bias = f"model.layers.{layer}.mlp.gate.e_score_correction_bias"
        t[bias] = np.where(np.arange(t[bias].size) >= 6, 5.0, 0.0).astype(np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(folder / "model.safetensors"))
    assert cli("deepseek", "--hf_model", folder, "-o", tmp_path / "run.pkl", "--dtype", "f32", "--allow-lossy")[0] == 0
    status, result, err = run_check(cli, tmp_path / "run.pkl", "v3", model=folder)
    assert status == 1 and not result["ok"] and result["max_abs_logit_diff"] > 1e-3, result
    # the same file beside the checkpoint without the bias is the same model
    assert run_check(cli, tmp_path / "run.pkl", "v3")[1]["ok"]


# ---------------------------------------------------------------- the way in: ttconv deepseek


def converted(path):
    """{name: array} and record 0 of a file ttconv wrote, as ttml.checkpointing reads it (pickle.load)."""
    first, arrays = ts.load_stream(path)
    names = [(group, path, name) for group, path, name in manifest_leaves(first["manifest"])]
    assert len(names) == len(arrays)
    return first, {(group, path, name): array for (group, path, name), array in zip(names, arrays)}


def manifest_leaves(manifest, path=()):
    """(group, path, name) of every tensor a manifest lists, in stream order."""
    for key, node in manifest.items():
        if not isinstance(node, dict):
            continue
        if "named_parameters" in node:
            yield from ((path[0] if path else key, path[1:] + (key,) if path else (), name)
                        for name in node["named_parameters"])
        else:
            yield from manifest_leaves(node, path + (key,))


@pytest.mark.parametrize("ep", [None, 2, 4])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_a_checkpoint_converts_into_ttmls_layout(cli, tmp_path, version, ep, backend):
    expected = ttml_model(original(version), ep)
    status, _, err = cli("deepseek", "--hf_model", MODELS[version], "-o", tmp_path / "run.pkl", "--dtype", "f32",
                         *(["--ep", ep] if ep else []))
    assert status == 0, err
    first, got = converted(tmp_path / "run.pkl")
    assert first["format"] == 1 and set(first["manifest"]) == {"model"}
    model = {name: array for (group, _, name), array in got.items() if group == "model"}
    assert set(model) == set(expected)
    for name, values in expected.items():
        assert model[name].dtype == np.float32 and model[name].shape == values.shape, name
        assert model[name].tobytes() == values.tobytes(), name
    meta = first["manifest"]["model"]["named_parameters"]
    assert all(m == {"layout": "TILE", "dtype": "FLOAT32"} for m in meta.values())


def test_bfloat16_by_default_and_back_exactly(cli, tmp_path, backend):
    t = original("v3")
    assert cli("deepseek", "--hf_model", MODELS["v3"], "-o", tmp_path / "run.pkl", "--ep", 2)[0] == 0
    first, got = converted(tmp_path / "run.pkl")
    for (_, _, name), array in got.items():
        assert array.dtype == ml_dtypes.bfloat16, name
        assert first["manifest"]["model"]["named_parameters"][name]["dtype"] == "BFLOAT16"
    expected = ttml_model(t, 2)
    for (_, _, name), array in got.items():
        assert array.tobytes() == expected[name].astype(ml_dtypes.bfloat16).tobytes(), name
    # and out again, from the header alone: the original's tensors rounded to bfloat16
    status, _, err = cli("to-hf", "deepseek", tmp_path / "run.pkl", "-o", tmp_path / "hf")
    assert status == 0, err
    back = exported(tmp_path / "hf")
    assert set(back) == set(t)  # the fixture's router biases are zeros, as ttml's and the export's
    for name, values in back.items():
        assert values.tobytes() == t[name].astype(ml_dtypes.bfloat16).tobytes(), name


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_a_bfloat16_checkpoint_keeps_its_values(cli, tmp_path, dtype, backend):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v2"], folder)
    t = {k: v.astype(ml_dtypes.bfloat16) for k, v in original("v2").items()}
    save_file(t, str(folder / "model.safetensors"))
    status, _, err = cli("deepseek", "--hf_model", folder, "-o", tmp_path / "run.pkl", "--dtype", dtype)
    assert status == 0, err
    got = {name: a for (_, _, name), a in converted(tmp_path / "run.pkl")[1].items()}
    want = ttml_model({k: v.astype(np.float32) for k, v in t.items()})  # bfloat16 widens exactly
    for name, values in want.items():
        expected = values.astype(ml_dtypes.bfloat16) if dtype == "bf16" else values
        assert got[name].dtype == expected.dtype and got[name].tobytes() == expected.tobytes(), name


@pytest.mark.parametrize("ep", [None, 4])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_the_header_is_model_builders_config_from_config_json(cli, tmp_path, version, ep):
    cfg = config(version)
    assert cli("deepseek", "--hf_model", MODELS[version], "-o", tmp_path / "run.pkl",
               *(["--ep", ep] if ep else []))[0] == 0
    header = converted(tmp_path / "run.pkl")[0]["header"]
    assert header["step"] == 0 and header["tokenizer"] is None
    model = header["model_config"]
    assert type(model).__module__ == "model_builders" and type(model).__name__ == "ModelConfig"
    assert (model.model_type, model.vocab_size, model.embedding_dim, model.num_blocks, model.num_heads,
            model.max_sequence_length) == ("deepseek", cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"],
                                           cfg["num_attention_heads"], cfg["max_position_embeddings"])
    spec = model.spec
    assert type(spec).__name__ == "_DeepSeekSpec"
    assert (spec.theta, spec.inter_dim, spec.n_dense_layers, spec.q_lora_rank, spec.kv_lora_rank,
            spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim) == (
        cfg["rope_parameters"]["rope_theta"], cfg["intermediate_size"], cfg["first_k_dense_replace"],
        cfg["q_lora_rank"] or 0, cfg["kv_lora_rank"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
        cfg["v_head_dim"])
    assert spec.moe_type == ("sparse_ep" if ep else "dense") and spec.moe_axis_name is None
    moe = spec.moe_hyperparam
    assert type(moe).__name__ == "MoEParams"
    assert (moe.moe_inter_dim, moe.n_routed_experts, moe.n_shared_experts, moe.n_activated_experts,
            moe.n_expert_groups, moe.n_limited_groups, moe.route_scale) == (
        cfg["moe_intermediate_size"], cfg["n_routed_experts"], cfg["n_shared_experts"], cfg["num_experts_per_tok"],
        cfg["n_group"], cfg["topk_group"], cfg["routed_scaling_factor"])
    assert moe.score_func == {"v2": "softmax", "v3": "sigmoid"}[version]


def test_a_training_layout_adds_adamws_fresh_state(cli, tmp_path):
    status, _, err = cli("deepseek", "--hf_model", MODELS["v2"], "-o", tmp_path / "run.pkl", "--layout", "training",
                         "--learning-rate", "2e-4", "--ep", 2)
    assert status == 0, err
    first, got = converted(tmp_path / "run.pkl")
    optimizer = first["manifest"]["optimizer"]
    assert (optimizer["steps"], optimizer["lr"], optimizer["amsgrad"]) == (0, 2e-4, False)
    model = {name: a for (group, _, name), a in got.items() if group == "model"}
    for moment in ("exp_avg", "exp_avg_sq"):
        moments = {name: a for (group, path, name), a in got.items() if group == "optimizer" and path == (moment,)}
        assert set(moments) == set(model), moment
        for name, array in moments.items():
            assert array.dtype == ml_dtypes.bfloat16 and array.shape == model[name].shape and not array.any()


def test_tensor_parallelism_pads_the_vocabulary_to_lcm_32_tp(cli, tmp_path):
    assert cli("deepseek", "--hf_model", MODELS["v2"], "-o", tmp_path / "run.pkl", "--tp", 3, "--max-seq-len", 64)[0] == 0
    first, got = converted(tmp_path / "run.pkl")
    arrays = {name: a for (_, _, name), a in got.items()}
    t = original("v2")
    for name, hf in ((f"{ROOT}/tok_emb/weight", "model.embed_tokens.weight"), (f"{ROOT}/head/weight", "lm_head.weight")):
        assert arrays[name].shape == (1, 1, 192, 64)  # 100 rows padded to a multiple of 96
        assert arrays[name][0, 0, :100].tobytes() == t[hf].astype(ml_dtypes.bfloat16).tobytes()
        assert not arrays[name][0, 0, 100:].any()
    assert first["header"]["model_config"].max_sequence_length == 64


def test_a_nonzero_router_bias_is_refused_and_nothing_is_written(cli, tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v3"], folder)
    t = dict(original("v3"))
    bias = "model.layers.2.mlp.gate.e_score_correction_bias"
    t[bias] = np.where(np.arange(t[bias].size) == 3, 0.25, 0.0).astype(np.float32)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(folder / "model.safetensors"))
    status, _, err = cli("deepseek", "--hf_model", folder, "-o", tmp_path / "run.pkl")
    assert status == 1 and one_error_line(err) and "nonzero e_score_correction_bias" in err and bias in err, err
    assert [p for p in os.listdir(tmp_path) if p != "original"] == []


@pytest.mark.parametrize("change, says", [
    ({"rms_norm_eps": 1e-6}, "rms_norm_eps 1e-06"),
    ({"norm_topk_prob": False}, "norm_topk_prob false"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "'yarn'"),
    ({"moe_layer_freq": 2}, "moe_layer_freq 2"),
    ({"rope_interleave": False}, "rope_interleave false"),
])
def test_the_way_in_refuses_what_ttml_computes_otherwise(cli, tmp_path, change, says):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v3"], folder)
    with open(folder / "config.json", "w") as f:
        json.dump(dict(config("v3"), **change), f)
    status, _, err = cli("deepseek", "--hf_model", folder, "-o", tmp_path / "run.pkl")
    assert status == 1 and one_error_line(err) and says in err, err
    assert not (tmp_path / "run.pkl").exists()


def test_experts_that_do_not_split_are_refused(cli, tmp_path):
    status, _, err = cli("deepseek", "--hf_model", MODELS["v2"], "-o", tmp_path / "run.pkl", "--ep", 3)
    assert status == 1 and one_error_line(err) and "do not split 3 ways" in err, err


def test_a_dry_run_plans_and_writes_nothing(cli, tmp_path):
    status, out, err = cli("deepseek", "--hf_model", MODELS["v3"], "-o", tmp_path / "run.pkl", "--dry-run", "--ep", 2)
    assert status == 0, err
    assert "DeepSeek/deepseek_block_1/ffn/experts/5/w1/weight [32, 64] <- model.layers.1.mlp.experts.5.gate_proj.weight" \
        in out
    assert os.listdir(tmp_path) == []


def test_a_truncated_checkpoint_ends_in_one_line_and_no_file(cli, tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v2"], folder)
    weights = folder / "model.safetensors"
    os.truncate(weights, os.path.getsize(weights) - 1000)
    status, _, err = cli("deepseek", "--hf_model", folder, "-o", tmp_path / "out" / "run.pkl")
    assert status == 1 and one_error_line(err), err
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("change, says", [
    ({"rms_norm_eps": 1e-6}, "rms_norm_eps 1e-06"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"bias": 0.25}, "a nonzero e_score_correction_bias"),
])
def test_allow_lossy_writes_the_file_warning_of_what_changes(cli, tmp_path, change, says):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v3"], folder)
    t = dict(original("v3"))
    if "bias" in change:
        bias = "model.layers.1.mlp.gate.e_score_correction_bias"
        t[bias] = np.full(t[bias].shape, change["bias"], dtype=np.float32)
        save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(folder / "model.safetensors"))
    else:
        with open(folder / "config.json", "w") as f:
            json.dump(dict(config("v3"), **change), f)
    status, _, err = cli("deepseek", "--hf_model", folder, "-o", tmp_path / "refused.pkl")
    assert status == 1 and says in err and "--allow-lossy writes the file anyway" in err, err
    status, _, err = cli("deepseek", "--hf_model", folder, "-o", tmp_path / "run.pkl", "--allow-lossy", "--dtype", "f32")
    assert status == 0, err
    assert f"ttconv: --allow-lossy: ttml's DeepSeek computes otherwise: {says}" in err
    got = {name: a for (_, _, name), a in converted(tmp_path / "run.pkl")[1].items()}
    expected = ttml_model(t)
    assert set(got) == set(expected)
    assert all(got[name].tobytes() == values.tobytes() for name, values in expected.items())


def test_greedy_softmax_routing_is_written_without_groups(cli, tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(MODELS["v2"], folder)
    with open(folder / "config.json", "w") as f:  # transformers' greedy top-k ignores groups; ttml would not
        json.dump(dict(config("v2"), n_group=4, topk_group=2, topk_method="greedy"), f)
    assert cli("deepseek", "--hf_model", folder, "-o", tmp_path / "run.pkl")[0] == 0
    moe = converted(tmp_path / "run.pkl")[0]["header"]["model_config"].spec.moe_hyperparam
    assert (moe.n_expert_groups, moe.n_limited_groups, moe.score_func) == (1, 1, "softmax")


# ---------------------------------------------------------------- LoRA


def lora_run(t, rng, adapted, rank=4):
    """A ttml LoRA run of the checkpoint t: the model wrapped as LoraModel/model/..., adapters on the
    adapted {ttml name (under the root): Hugging Face module}; returns (model, {module: (A, B)})."""
    wrapped = {"LoraModel/model/" + name: values for name, values in ttml_model(t).items()}
    adapters = {}
    for ttml, module in adapted.items():
        out, inner = t[module + ".weight"].shape
        a = (rng.normal(size=(rank, inner)) * 0.1).astype(np.float32)
        b = (rng.normal(size=(out, rank)) * 0.1).astype(np.float32)
        wrapped[f"LoraModel/model/{ROOT}/{ttml}/lora_A"] = ts.four_d(a)
        wrapped[f"LoraModel/model/{ROOT}/{ttml}/lora_B"] = ts.four_d(b)
        adapters[module] = (a, b)
    return wrapped, adapters


LORA_TARGETS = {"blocks/1/attn/wq_b": "model.layers.1.self_attn.q_b_proj",
                "blocks/2/attn/wkv_b": "model.layers.2.self_attn.kv_b_proj",
                "blocks/0/attn/wo": "model.layers.0.self_attn.o_proj",
                "blocks/1/ffn/experts/3/w1": "model.layers.1.mlp.experts.3.gate_proj",
                "blocks/2/ffn/shared_experts/w2": "model.layers.2.mlp.shared_experts.down_proj"}


def test_lora_adapters_become_a_peft_folder_under_the_originals_names(cli, tmp_path):
    t = original("v3")
    wrapped, adapters = lora_run(t, np.random.default_rng(7), LORA_TARGETS)
    path = ts.write_stream(tmp_path / "lora.pkl", wrapped)
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", MODELS["v3"], "-o", tmp_path / "adapter",
                         "--lora-alpha", "8")
    assert status == 0, err
    assert ("does not load these DeepSeek adapters as trained "
            "(model.layers.1.mlp.experts.3.gate_proj and 1 more)") in err
    lora_support.assert_peft_folder(tmp_path / "adapter", adapters, 4, 8)
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", MODELS["v3"], "-o", tmp_path / "merged",
                         "--lora-alpha", "8", "--merge-lora")
    assert status == 0, err
    merged = exported(tmp_path / "merged")
    for module, (a, b) in adapters.items():
        np.testing.assert_allclose(merged[module + ".weight"], t[module + ".weight"] + np.float32(8 / 4) * (b @ a),
                                   rtol=1e-6, atol=1e-7, err_msg=module)
    untouched = [n for n in t if n.rsplit(".", 1)[0] not in adapters]
    assert all(merged[n].tobytes() == t[n].tobytes() for n in untouched)


def test_a_lora_file_is_checked_merged(cli, tmp_path):
    t = original("v3")
    wrapped, adapters = lora_run(t, np.random.default_rng(8), LORA_TARGETS)
    path = ts.write_stream(tmp_path / "lora.pkl", wrapped)
    folder = tmp_path / "merged-original"
    shutil.copytree(MODELS["v3"], folder)
    merged = dict(t)
    for module, (a, b) in adapters.items():
        merged[module + ".weight"] = t[module + ".weight"] + np.float32(16 / 4) * (b @ a)
    save_file({k: np.ascontiguousarray(v) for k, v in merged.items()}, str(folder / "model.safetensors"))
    status, result, err = run_check(cli, path, "v3", "--lora-alpha", "16", model=folder)
    assert status == 0 and result["ok"], err
    status, result, err = run_check(cli, path, "v3", "--lora-alpha", "16")  # against the base: another model
    assert status == 1 and not result["ok"]


def test_attention_and_whole_expert_layers_need_no_caveat(cli, tmp_path):
    # PEFT loads these as trained: attention linears, and every expert of a layer with its three linears
    attention = {k: v for k, v in LORA_TARGETS.items() if "/attn/" in k}
    for e in range(config("v3")["n_routed_experts"]):
        for tt, hf in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            attention[f"blocks/2/ffn/experts/{e}/{tt}"] = f"model.layers.2.mlp.experts.{e}.{hf}"
    wrapped, _ = lora_run(original("v3"), np.random.default_rng(9), attention)
    path = ts.write_stream(tmp_path / "lora.pkl", wrapped)
    status, _, err = cli("to-hf", "deepseek", path, "--hf_model", MODELS["v3"], "-o", tmp_path / "adapter",
                         "--lora-alpha", "8")
    assert status == 0 and "PEFT" not in err.replace("PEFT LoRA adapter", ""), err
