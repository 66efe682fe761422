"""tt-train Python-side (ttml) checkpoints through to-hf, check and inspect, written by
ttml_support as ttml.checkpointing and the SFT trainer write them, from the tests' trained models."""
import json
import os

import ml_dtypes
import numpy as np
import pytest
from tokenizers import Tokenizer

import support
import ttml_support as ts
from test_check import CORPUS, TRAINED, one_error_line, trained
from test_export_hf import raw_safetensors

CONFIGS = {name: json.load(open(os.path.join(TRAINED, name, "config.json")))
           for name in ("llama", "qwen3", "qwen3-tied", "gpt2")}
TENSORS = {name: ts.hf_tensors(os.path.join(TRAINED, name)) for name in CONFIGS}
FAMILY = {"llama": "llama", "qwen3": "qwen3", "qwen3-tied": "qwen3", "gpt2": "gpt2"}


def ttml_model(name, scheme, tp=1, order="reversed", tied_name=None):
    cfg, t = CONFIGS[name], TENSORS[name]
    if name == "llama":
        return ts.llama_model(cfg, t, fused=scheme == "fused", tp=tp, order=order, tied_name=tied_name)
    if name == "gpt2":
        return ts.nanogpt_model(cfg, t, order=order, tied_name=tied_name or "tok_emb")
    tied = cfg.get("tie_word_embeddings")
    return ts.qwen3_model(cfg, t, scheme, tp=tp, order=order, tied_name=tied_name or ("tok_emb" if tied else None))


def header_of(name, tokenizer=False):
    cfg = CONFIGS[name]

    def build(classes):
        header = {"step": 40, "model_config": ts.model_config(classes, FAMILY[name], cfg,
                                                              cfg.get("tie_word_embeddings", False))}
        header["tokenizer"] = classes.CharTokenizer(open(CORPUS).read()) if tokenizer else None
        return header
    return build


def written_tensors(folder):
    return {name: (dtype, shape, data) for name, (dtype, shape, data) in raw_safetensors(
        os.path.join(folder, "model.safetensors")).items()}


def assert_equals_checkpoint(folder, name, dtype="F32"):
    """Every tensor of the export equals the trained checkpoint's (rounded to bf16 when the file held bf16)."""
    got = written_tensors(folder)
    expected = TENSORS[name]
    assert set(got) == set(expected), (set(got) ^ set(expected))
    for key, values in expected.items():
        want = values.astype(ml_dtypes.bfloat16) if dtype == "BF16" else values
        assert got[key][0] == dtype and tuple(got[key][1]) == values.shape, key
        assert got[key][2] == want.tobytes(), key


CASES = [  # (model, scheme, tp, bf16, optimizer, protocol, numpy1)
    ("llama", "unfused", 1, False, "adamw", 4, False),
    ("llama", "fused", 1, True, "adamw", 5, False),
    ("llama", "fused", 2, False, None, 2, True),
    ("llama", "unfused", 2, True, "full", 4, True),
    ("qwen3", "unfused", 1, False, None, 3, False),
    ("qwen3", "kv", 1, True, "adamw", 4, False),
    ("qwen3", "kv", 2, False, "full", 5, True),
    ("qwen3", "hf", 1, False, None, 2, False),
    ("qwen3-tied", "kv", 1, False, "adamw", 4, False),
    ("qwen3-tied", "unfused", 1, True, None, 4, True),
    ("gpt2", "nanogpt", 1, False, "adamw", 4, False),
    ("gpt2", "nanogpt", 1, True, None, 2, True),
]


def write_case(tmp_path, name, scheme, tp, bf16, optimizer, protocol, numpy1, tokenizer=False):
    model = ttml_model(name, scheme, tp)
    stored = ts.as_bf16(model) if bf16 or optimizer == "full" else model
    state = ts.adamw_state(model, full_precision=optimizer == "full") if optimizer else None
    path = tmp_path / f"{name}-{scheme}.pkl"
    return ts.write_stream(path, stored, state, protocol=protocol, numpy1=numpy1,
                           header_of=header_of(name, tokenizer))


@pytest.mark.parametrize("name,scheme,tp,bf16,optimizer,protocol,numpy1", CASES)
def test_export_equals_the_checkpoint_with_and_without_the_original(cli, tmp_path, name, scheme, tp, bf16, optimizer,
                                                                     protocol, numpy1):
    path = write_case(tmp_path, name, scheme, tp, bf16, optimizer, protocol, numpy1)
    family = FAMILY[name]
    tp_args = ["--tp", str(tp)] if tp > 1 else []
    # full precision: the float32 master weights are exported, not the bf16 model copy
    dtype = "BF16" if bf16 and optimizer != "full" else "F32"
    status, _, err = cli("to-hf", family, path, "--hf_model", os.path.join(TRAINED, name), "-o", tmp_path / "with",
                         "-q", *tp_args)
    assert status == 0, err
    assert_equals_checkpoint(tmp_path / "with", name, dtype)
    status, _, err = cli("to-hf", family, path, "-o", tmp_path / "alone", "-q", *tp_args)
    assert status == 0, err
    assert_equals_checkpoint(tmp_path / "alone", name, dtype)
    config = json.load(open(tmp_path / "alone" / "config.json"))
    original = CONFIGS[name]
    for key, value in original.items():
        if key not in ("torch_dtype", "rope_scaling", "sliding_window", "use_sliding_window"):
            assert config[key] == value, key
    assert config["torch_dtype"] == ("bfloat16" if dtype == "BF16" else "float32")


CHECKED = [CASES[1], CASES[2], CASES[6], CASES[7], CASES[8], CASES[10]]


@pytest.mark.parametrize("name,scheme,tp,bf16,optimizer,protocol,numpy1", CHECKED)
def test_check_reproduces_the_trained_loss(cli, tmp_path, name, scheme, tp, bf16, optimizer, protocol, numpy1):
    path = write_case(tmp_path, name, scheme, tp, bf16, optimizer, protocol, numpy1)
    model, expected = trained(name)
    status, out, err = cli("check", FAMILY[name], path, "--hf_model", model, "--json", *(["--tp", str(tp)] * (tp > 1)))
    result = json.loads(out)
    assert status == 0 and result["ok"], err
    assert result["hf_loss"] == pytest.approx(expected["sample_loss"], rel=1e-4 if not bf16 else 2e-2)
    assert result["tt_loss"] == pytest.approx(result["hf_loss"], rel=1e-4)


def test_a_wrong_qk_layout_fails_the_check(cli, tmp_path):
    cfg, t = CONFIGS["llama"], TENSORS["llama"]
    model = ts.llama_model(cfg, t, fused=True)
    # q rows left in Hugging Face order: what a converter that forgets the RoPE permutation writes
    for i in range(cfg["num_hidden_layers"]):
        name = f"Llama/blocks/{i}/attention/qkv_linear/weight"
        q = t[f"model.layers.{i}.self_attn.q_proj.weight"]
        model[name][0, 0, :q.shape[0]] = q
    path = ts.write_stream(tmp_path / "wrong.pkl", model, header_of=header_of("llama"))
    status, out, err = cli("check", "llama", path, "--hf_model", os.path.join(TRAINED, "llama"), "--json",
                           "--text", CORPUS)
    assert status == 1 and not json.loads(out)["ok"]


def test_a_tensor_parallel_file_read_without_tp_fails_and_says_to_try_tp(cli, tmp_path):
    path = write_case(tmp_path, "llama", "fused", 2, False, None, 4, False)
    status, _, err = cli("check", "llama", path, "--hf_model", os.path.join(TRAINED, "llama"))
    assert status == 1 and "try --tp N" in err


def test_legacy_sft_pickle(cli, tmp_path):
    model = ttml_model("llama", "unfused")
    path = ts.write_sft(tmp_path / "step_7.pkl", model, step=7)
    status, _, err = cli("to-hf", "llama", path, "--hf_model", os.path.join(TRAINED, "llama"), "-o", tmp_path / "out",
                         "-q")
    assert status == 0, err
    assert_equals_checkpoint(tmp_path / "out", "llama")
    status, _, err = cli("to-hf", "llama", path, "-o", tmp_path / "alone")
    assert status == 1 and one_error_line(err) and "no model_config" in err and "--hf_model" in err
    status, out, _ = cli("inspect", path, "--json")
    info = json.loads(out)
    assert info["format"] == "ttml" and info["step"] == 7 and "SFT" in info["kind"]


def test_character_tokenizer_becomes_an_equivalent_tokenizer_json(cli, tmp_path):
    path = write_case(tmp_path, "gpt2", "nanogpt", 1, False, None, 4, False, tokenizer=True)
    status, _, err = cli("to-hf", "gpt2", path, "-o", tmp_path / "out", "-q")
    assert status == 0, err
    text = open(CORPUS).read()
    stoi = {"<PAD>": 0}
    for ch in sorted(set(text)):  # ttml's CharTokenizer, written out here
        stoi[ch] = len(stoi)
    tokenizer = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    sample = text[:500]
    assert tokenizer.encode(sample).ids == [stoi[c] for c in sample]
    assert tokenizer.decode([stoi[c] for c in sample]) == sample
    assert tokenizer.encode("<BEG>" + sample[:3]).ids[0] == len(stoi)


def test_set_overrides_config_fields_and_a_malformed_one_is_refused(cli, tmp_path):
    path = write_case(tmp_path, "qwen3", "kv", 1, False, None, 4, False)
    status, _, err = cli("to-hf", "qwen3", path, "-o", tmp_path / "out", "-q", "--set", "rms_norm_eps=1e-5",
                         "--set", "eos_token_id=3")
    assert status == 0, err
    config = json.load(open(tmp_path / "out" / "config.json"))
    assert config["rms_norm_eps"] == 1e-5 and config["eos_token_id"] == 3
    status, _, err = cli("to-hf", "qwen3", path, "-o", tmp_path / "bad", "--set", "rms_norm_eps")
    assert status == 1 and one_error_line(err) and "KEY=VALUE" in err and not (tmp_path / "bad").exists()


def test_inspect_shows_format_step_config_optimizer_and_tensors(cli, tmp_path):
    path = write_case(tmp_path, "llama", "fused", 1, True, "adamw", 4, False)
    status, out, err = cli("inspect", path)
    assert status == 0, err
    assert "ttml.checkpointing format 1" in out and "step 40" in out and "num_heads=4" in out
    assert "Llama/blocks/0/attention/qkv_linear/weight" in out and "1x1x128x64" in out and "BFLOAT16" in out
    assert "exp_avg[Llama/fc/weight]" in out and "steps = 12" in out
    status, out, _ = cli("inspect", path, "--json")
    info = json.loads(out)
    assert info["model_config"]["embedding_dim"] == 64 and info["fused_tensors"] == ["qkv_linear", "w_gate_up"]
    assert [r["name"] for r in info["parameters"]] == list(ttml_model("llama", "fused"))  # stream order, unsorted
    assert {r["data_type"] for r in info["optimizer"]} == {"BFLOAT16"}


def test_master_weights_are_exported_instead_of_the_bf16_copy(cli, tmp_path):
    path = write_case(tmp_path, "llama", "unfused", 1, True, "full", 4, False)
    status, _, err = cli("to-hf", "llama", path, "-o", tmp_path / "out")
    assert status == 0 and "master weights" in err
    assert_equals_checkpoint(tmp_path / "out", "llama", "F32")


@pytest.mark.parametrize("damage,message", [
    ("truncate", "truncated"),
    ("extra", "more records follow"),
    ("non-array", "expected a numpy array"),
    ("version", "format 2"),
    ("optimizer-shape", "truncated optimizer state"),
    ("unknown-name", "unknown Llama parameter 'Llama/blocks/0/attention/rotary/weight'"),
    ("tp", "do not split 3 ways"),
    ("shape", "shape mismatch"),
    ("missing", "holds nothing for model.layers.1.mlp.down_proj.weight"),
])
def test_damaged_files_end_in_one_error_line_and_write_nothing(cli, tmp_path, damage, message):
    model = ttml_model("llama", "fused")
    state = ts.adamw_state(model)
    path = tmp_path / "damaged.pkl"
    if damage == "optimizer-shape":
        state["exp_avg"]["Llama/ln_fc/gamma"] = np.zeros((1, 1, 1, 32), np.float32)
    if damage == "unknown-name":
        model["Llama/blocks/0/attention/rotary/weight"] = np.zeros((1, 1, 2, 64), np.float32)
    if damage == "missing":
        del model["Llama/blocks/1/mlp/w2/weight"]
        state = None
    if damage == "shape":
        model["Llama/blocks/0/mlp/w2/weight"] = np.zeros((1, 1, 64, 96), np.float32)
        state = None
    ts.write_stream(path, model, state, header_of=header_of("llama"))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "extra":
        path.write_bytes(data + ts.pickle.dumps(np.zeros(3, np.float32)))
    elif damage == "non-array":
        ts.write_stream(path, model, header_of=header_of("llama"))
        path.write_bytes(path.read_bytes()[:-len(ts.pickle.dumps(model["Llama/fc/weight"], protocol=4))]
                         + ts.pickle.dumps({"not": "an array"}, protocol=4))
    elif damage == "version":
        path.write_bytes(data.replace(b"\x8c\x06format\x94K\x01", b"\x8c\x06format\x94K\x02", 1))
    before = path.read_bytes()
    extra = ["--tp", "3"] if damage == "tp" else []
    status, _, err = cli("to-hf", "llama", path, "--hf_model", os.path.join(TRAINED, "llama"), "-o", tmp_path / "out",
                         *extra)
    assert status == 1 and one_error_line(err) and message in err, err
    assert not (tmp_path / "out").exists() and path.read_bytes() == before


def test_hostile_files_run_nothing_and_write_nothing(cli, tmp_path):
    from test_unpickler import hostile_pickles

    marker = tmp_path / "ran"
    model = ttml_model("llama", "unfused")
    for label, payload in hostile_pickles(marker).items():
        for where in ("header", "record"):
            path = tmp_path / f"{label}-{where}.pkl"
            if where == "header":
                ts.write_stream(path, model, header={"step": 1, "evil": payload})
            else:
                ts.write_stream(path, dict(model, **{"Llama/fc/weight": payload}))
            for command in (["to-hf", "llama", path, "-o", tmp_path / "out"], ["inspect", path],
                            ["check", "llama", path, "--hf_model", os.path.join(TRAINED, "llama")]):
                status, _, err = cli(*command)
                assert status == 1 and one_error_line(err) and "refuses" in err, (label, where, err)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_ttml_files_are_not_filled_and_other_formats_refuse_tp(cli, tmp_path):
    path = write_case(tmp_path, "llama", "unfused", 1, False, None, 4, False)
    status, _, err = cli("llama", "-i", path, "--hf_model", os.path.join(TRAINED, "llama"), "-o", tmp_path / "o.msgpack")
    assert status == 1 and one_error_line(err) and "does not fill" in err
    msgpack = tmp_path / "tt.msgpack"
    assert cli("llama", "--no-init", "-o", msgpack, "--hf_model", os.path.join(TRAINED, "llama"), "-q")[0] == 0
    status, _, err = cli("to-hf", "llama", msgpack, "--hf_model", os.path.join(TRAINED, "llama"), "-o",
                         tmp_path / "out", "--tp", "2")
    assert status == 1 and one_error_line(err) and "--tp applies" in err
    status, _, err = cli("to-hf", "llama", msgpack, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "--hf_model" in err


def test_wrong_family_is_named(cli, tmp_path):
    path = write_case(tmp_path, "qwen3", "kv", 1, False, None, 4, False)
    status, _, err = cli("to-hf", "llama", path, "-o", tmp_path / "out")
    assert status == 1 and one_error_line(err) and "to-hf qwen3" in err


def test_composite_optimizer_state_is_read_and_left_alone(cli, tmp_path):
    model = ttml_model("llama", "unfused")
    muon = {"momentum": ts.Leaves({n: np.zeros(a.shape, np.float32) for n, a in model.items()}), "steps": 3}
    state = {"muon": muon, "adamw": ts.adamw_state(model, full_precision=True)}  # MuonWithAdamW nests its parts
    path = ts.write_stream(tmp_path / "muon.pkl", ts.as_bf16(model), state, header_of=header_of("llama"))
    status, out, _ = cli("inspect", path, "--json")
    info = json.loads(out)
    assert info["optimizer_scalars"] == {"muon/steps": 3, "adamw/steps": 12, "adamw/lr": 3e-4, "adamw/amsgrad": False}
    assert len(info["optimizer"]) == 4 * len(model)
    status, _, err = cli("to-hf", "llama", path, "-o", tmp_path / "out")
    assert status == 0 and "master weights" in err  # adamw/master_weights, nested, found
    assert_equals_checkpoint(tmp_path / "out", "llama")


@pytest.mark.parametrize("tied_name", ["tok_emb", "fc"])
def test_a_tied_embedding_under_either_name(cli, tmp_path, tied_name):
    model = ttml_model("qwen3-tied", "kv", tied_name=tied_name)
    assert [n for n in model if n in ("Qwen3/tok_emb/weight", "Qwen3/fc/weight")] == [f"Qwen3/{tied_name}/weight"]
    path = ts.write_stream(tmp_path / f"{tied_name}.pkl", model, header_of=header_of("qwen3-tied"))
    status, _, err = cli("to-hf", "qwen3", path, "-o", tmp_path / "out", "-q")
    assert status == 0, err
    assert_equals_checkpoint(tmp_path / "out", "qwen3-tied")
    assert json.load(open(tmp_path / "out" / "config.json"))["tie_word_embeddings"] is True


def test_rope_scaling_and_sizes_come_from_the_header(cli, tmp_path):
    path = write_case(tmp_path, "llama", "fused", 1, False, None, 4, False)
    data = path.read_bytes()
    # the same file with a Llama 3 RoPE scaling in its header's spec
    cfg = dict(CONFIGS["llama"])

    def header(classes):
        config = ts.model_config(classes, "llama", cfg, False)
        config.spec.scaling_factor, config.spec.original_context_length = 8.0, 64
        return {"step": 1, "model_config": config}
    model = ttml_model("llama", "fused")
    scaled = ts.write_stream(tmp_path / "scaled.pkl", model, header_of=header)
    assert scaled.read_bytes() != data
    status, _, err = cli("to-hf", "llama", scaled, "-o", tmp_path / "out", "-q")
    assert status == 0, err
    config = json.load(open(tmp_path / "out" / "config.json"))
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                                      "low_freq_factor": 1.0, "original_max_position_embeddings": 64}


def test_detected_by_content_whatever_the_name(cli, tmp_path):
    path = write_case(tmp_path, "llama", "unfused", 1, False, None, 4, False)
    renamed = tmp_path / "model.msgpack"
    path.rename(renamed)
    status, out, _ = cli("inspect", renamed, "--json")
    assert status == 0 and json.loads(out)["format"] == "ttml"


def test_the_first_nanogpt_names(cli, tmp_path):
    """wte/wpe and a tied lm_head_weight, as the first Python NanoGPT named them."""
    renamed = {"NanoGPT/tok_emb/weight": "NanoGPT/wte/weight", "NanoGPT/pos_emb/weight": "NanoGPT/wpe/weight"}
    model = {renamed.get(k, k): v for k, v in ttml_model("gpt2", "nanogpt").items()}
    path = ts.write_stream(tmp_path / "old.pkl", model, header_of=header_of("gpt2"))
    status, _, err = cli("to-hf", "gpt2", path, "-o", tmp_path / "out", "-q")
    assert status == 0, err
    assert_equals_checkpoint(tmp_path / "out", "gpt2")
