"""Training saves (model + AdamW + scheduler) both ways, and files built without an init file."""
import json

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import support
from ttconv.tt import ttfile

LR = 2.5e-4


def llama_case(tmp_path, vocab=77, tie=False, **cfg_extra):
    cfg = support.llama_config(vocab=vocab, tie=tie, **cfg_extra)
    stored = support.write_checkpoint(tmp_path / "ckpt", cfg, support.llama_tensors(cfg, tie=tie))
    (tmp_path / "ckpt" / "tokenizer.json").write_bytes(
        open(f"{support.FIXTURES}/llama-mini/tokenizer.json", "rb").read())
    return cfg, stored, support.llama_tt_shapes(cfg, -(-vocab // 32) * 32, tied=tie)


def gpt2_case(tmp_path, vocab=100, tie=True):
    cfg = support.gpt2_config(vocab=vocab)
    cfg["tie_word_embeddings"] = tie
    stored = support.write_checkpoint(tmp_path / "ckpt", cfg, support.gpt2_tensors(cfg, lm_head=not tie))
    (tmp_path / "ckpt" / "tokenizer.json").write_text("{}")
    return cfg, stored, support.gpt2_tt_shapes(cfg, -(-vocab // 32) * 32, cfg["n_positions"], tied=tie)


def training_save(path, shapes, prefix, root, **state):
    path.write_bytes(support.init_file_bytes(
        shapes, prefix=prefix, extra_entries=support.training_state_entries(shapes, root, **state)))
    return path


def raw_map(path):
    return dict(support.tt_raw_entries(path))


# ------------------------------------------------------------------ reading training saves

def test_inspect_groups_a_training_save(cli, tmp_path):
    _, _, shapes = llama_case(tmp_path)
    save = training_save(tmp_path / "save.msgpack", shapes, "transformer/llama", "llama", steps=120,
                         moments="random", kahan=True, scheduler="warmup_linear", lr=LR)
    status, out, _ = cli("inspect", save, "--json")
    assert status == 0
    info = json.loads(out)
    assert info["training_state"] and info["model_prefix"] == "transformer/llama"
    assert info["kind"].startswith("training state: model under transformer/llama, where tt-train saves a Llama")
    assert {row["name"] for row in info["parameters"]} == {f"transformer/llama/{n}" for n in shapes}
    assert len(info["optimizer"]) == 3 * len(shapes)
    assert info["optimizer_scalars"] == {"adamw/steps": 120}
    assert info["scheduler"]["scheduler/current_scheduler/m_last_step"] == 120
    assert info["scheduler"]["scheduler/m_last_lr"] == pytest.approx(LR)
    status, text, _ = cli("inspect", save)
    assert "kind: training state" in text and "\noptimizer (" in text and "scheduler/m_last_lr = 0.00025" in text


def test_model_file_is_not_a_training_state(cli):
    status, out, _ = cli("inspect", f"{support.FIXTURES}/llama-mini/init.msgpack", "--json")
    info = json.loads(out)
    assert not info["training_state"] and info["kind"].startswith("model parameters under llama/llama")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_to_hf_exports_the_model_of_a_training_save(cli, tmp_path, family):
    cfg, stored, shapes = llama_case(tmp_path) if family == "llama" else gpt2_case(tmp_path)
    prefix, root = ("transformer/llama", "llama") if family == "llama" else ("transformer/transformer", "transformer")
    save = training_save(tmp_path / "save.msgpack", shapes, prefix, root, steps=7, moments="random")
    filled = tmp_path / "filled.msgpack"
    assert cli(family, "-i", save, "-o", filled, "--hf_model", tmp_path / "ckpt")[0] == 0
    status, _, err = cli("to-hf", family, "-i", filled, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "hf")
    assert status == 0, err
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(exported) == sorted(stored)
    for name, value in stored.items():
        assert exported[name].tobytes() == value.tobytes(), name


# ------------------------------------------------------------------ filling a training save

def test_filling_a_training_save_resets_its_state(cli, tmp_path):
    _, stored, shapes = llama_case(tmp_path)
    save = training_save(tmp_path / "save.msgpack", shapes, "transformer/llama", "llama", steps=300,
                         moments="random", kahan=True, scheduler="warmup_linear", lr=LR)
    out = tmp_path / "out.msgpack"
    status, _, err = cli("llama", "-i", save, "-o", out, "--hf_model", tmp_path / "ckpt")
    assert status == 0, err
    moments = 3 * len(shapes)
    assert f"optimizer and scheduler state reset ({moments} moment tensors zeroed, 4 step counters set to 0)" in err
    assert "add --prefix llama/llama" in err
    before, after = raw_map(save), raw_map(out)
    assert list(before) == list(after)
    parsed = support.read_tt(out)
    for key, raw in before.items():
        if key.startswith("adamw/") and key.endswith("/value/data"):
            variant, values = parsed[key]
            assert variant == 10 and values == [0] * len(support.read_tt(save)[key][1]), key
        elif key in ("adamw/steps", "scheduler/m_current_step_in_scheduler", "scheduler/m_current_scheduler_index",
                     "scheduler/current_scheduler/m_last_step"):
            assert parsed[key] == [support.read_tt(save)[key][0], 0], key
        elif key.startswith("transformer/llama/") and key.endswith("/value/data"):
            continue
        else:
            assert after[key] == raw, key
    reference = support.expected_llama(support.llama_config(vocab=77), stored, shapes)
    for name, weight in reference.items():
        np.testing.assert_array_equal(support.tt_tensor(parsed, "transformer/llama", name), weight)


def test_keep_optimizer_state_and_prefix(cli, tmp_path):
    _, _, shapes = llama_case(tmp_path)
    save = training_save(tmp_path / "save.msgpack", shapes, "transformer/llama", "llama", steps=300,
                         moments="random")
    out = tmp_path / "out.msgpack"
    status, _, err = cli("llama", "-i", save, "-o", out, "--hf_model", tmp_path / "ckpt",
                         "--keep-optimizer-state", "--prefix", "llama/llama")
    assert status == 0, err
    assert "state kept as it was, model moved from transformer/llama to llama/llama" in err
    assert "add --prefix" not in err
    before, after = raw_map(save), raw_map(out)
    renamed = {("llama/llama/" + k[len("transformer/llama/"):] if k.startswith("transformer/llama/") else k): v
               for k, v in before.items()}
    assert list(after) == list(renamed)
    for key, raw in renamed.items():
        if not (key.startswith("llama/llama/") and key.endswith("/value/data")):
            assert after[key] == raw, key
    status, out_json, _ = cli("inspect", out, "--json")
    assert json.loads(out_json)["model_prefix"] == "llama/llama"


@pytest.mark.parametrize("change", ["none", "same size", "shorter"])
def test_filling_a_save_indexes_it_optimistically_as_a_full_index_would(cli, tmp_path, monkeypatch, change):
    """A conversion takes the init file's long arrays whose first and last values are float32 for float32
    values, unscanned (as to-hf does): what it fills is replaced and what it keeps is confirmed, then
    copied, so the output is the one a full index gives, also when a kept moment holds other number
    encodings ("same size": a uint32 for a float32; "shorter": a one-byte int, so the array is not
    where a float32 array's would end, and is scanned)."""
    monkeypatch.setattr(ttfile, "ASSUMED_MIN_VALUES", 16)
    _, _, shapes = llama_case(tmp_path)
    rng = np.random.default_rng(3)
    weights = {name: rng.uniform(0.1, 1.0, rows * cols) for name, (rows, cols) in shapes.items()}  # no integral values
    save = tmp_path / "save.msgpack"
    save.write_bytes(support.init_file_bytes(shapes, prefix="transformer/llama", values=weights, extra_entries=(
        support.training_state_entries(shapes, "llama", steps=300, moments="random"))))
    moment = next(e for e in ttfile.TtFile(save).entries if e.key.startswith("adamw/") and e.n_elements >= 64)
    data = bytearray(save.read_bytes())
    at = moment.end - 5 * (moment.n_elements - 3)
    data[at:at + 5] = {"none": data[at:at + 5], "same size": b"\xce\x00\x00\x00\x05", "shorter": b"\x05"}[change]
    save.write_bytes(bytes(data))
    assumed, confirmed = [], []
    index, confirm = ttfile.TtFile._index, ttfile.TtFile.confirm
    monkeypatch.setattr(ttfile.TtFile, "_index", lambda self, cur: index(self, cur) or assumed.append(
        {e.key for e in self.entries if e.assumed}))
    monkeypatch.setattr(ttfile.TtFile, "confirm", lambda self, entry: confirmed.append(entry.key) or confirm(self, entry))
    outputs = []
    for limit in (16, 1 << 40):  # optimistic, then every value scanned
        monkeypatch.setattr(ttfile, "ASSUMED_MIN_VALUES", limit)
        out = tmp_path / f"out-{limit}.msgpack"
        status, _, err = cli("llama", "-i", save, "-o", out, "--hf_model", tmp_path / "ckpt", "--keep-optimizer-state")
        assert status == 0, err
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and raw_map(out)[moment.key] == raw_map(save)[moment.key]
    assert "transformer/llama/fc/weight/value/data" in assumed[0] and not assumed[1]
    assert (moment.key in assumed[0]) == (moment.key in confirmed) == (change != "shorter")


# ------------------------------------------------------------------ no init file

CASES = [("llama", "training", "identity"), ("llama", "training", "warmup_linear"), ("llama", "model", "identity"),
         ("gpt2", "training", "warmup_linear"), ("gpt2", "model", "identity")]


@pytest.mark.parametrize("family,layout,scheduler", CASES)
@pytest.mark.parametrize("tie", [False, True])
def test_built_file_equals_a_tt_train_style_init_file_filled(cli, tmp_path, family, layout, scheduler, tie):
    if family == "llama":
        _, _, shapes = llama_case(tmp_path, tie=tie)
    else:
        _, _, shapes = gpt2_case(tmp_path, tie=tie)
    prefix = "llama/llama" if family == "llama" else "transformer/transformer"
    root = prefix.split("/")[1]
    state = support.training_state_entries(shapes, root, scheduler=scheduler, lr=LR) if layout == "training" else ()
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(shapes, prefix=prefix, extra_entries=state))
    filled, built = tmp_path / "filled.msgpack", tmp_path / "built.msgpack"
    assert cli(family, "-i", init, "-o", filled, "--hf_model", tmp_path / "ckpt")[0] == 0
    status, _, err = cli(family, "--no-init", "-o", built, "--hf_model", tmp_path / "ckpt", "--layout", layout,
                         "--scheduler", scheduler, "--learning-rate", str(LR))
    assert status == 0, err
    assert f"no init file: building {prefix} from config.json: layout {layout}" in err
    assert raw_map(built) == raw_map(filled)


def test_llama_without_default_init_builds_and_gpt2_with_only_output(cli, tmp_path, monkeypatch):
    llama_case(tmp_path)
    monkeypatch.chdir(tmp_path)
    status, _, err = cli("llama", "--hf_model", tmp_path / "ckpt")
    assert status == 0 and "no init file" in err
    assert support.read_tt(tmp_path / "data" / "tinyllama_exported.msgpack")["adamw/steps"] == [6, 0]
    gpt2 = tmp_path / "g"
    gpt2.mkdir()
    gpt2_case(gpt2)
    status, _, err = cli("gpt2", "-o", gpt2 / "out.msgpack", "--hf_model", gpt2 / "ckpt", "--layout", "model")
    assert status == 0 and "no init file" in err and "adamw/steps" not in support.read_tt(gpt2 / "out.msgpack")


def test_vocab_multiple(cli, tmp_path, capsys):
    llama_case(tmp_path, vocab=77)
    out = tmp_path / "out.msgpack"
    assert cli("llama", "--no-init", "-o", out, "--hf_model", tmp_path / "ckpt", "--vocab-multiple", "64")[0] == 0
    assert support.tt_tensor(support.read_tt(out), "llama/llama", "fc/weight").shape == (128, 32)
    with pytest.raises(SystemExit) as exit_:
        cli("llama", "--no-init", "-o", out, "--hf_model", tmp_path / "ckpt", "--vocab-multiple", "0")
    assert exit_.value.code == 2 and "expected a positive integer, not '0'" in capsys.readouterr().err


def test_no_init_with_an_input_is_refused(cli, tmp_path):
    llama_case(tmp_path)
    status, _, err = cli("llama", "--no-init", "-i", "x.msgpack", "-o", tmp_path / "o", "--hf_model", tmp_path / "ckpt")
    assert status == 1 and "--no-init builds the file from config.json" in err


# ------------------------------------------------------------------ YAML and refusals

def test_config_yaml_matches_the_checkpoint_and_the_file(cli, tmp_path):
    rope = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    cfg, _, _ = llama_case(tmp_path, vocab=77, tie=True, rope_scaling=rope, rope_theta=500000.0)
    out = tmp_path / "model.msgpack"
    status, _, err = cli("llama", "--no-init", "-o", out, "--hf_model", tmp_path / "ckpt", "-t", tmp_path / "tok.json",
                         "--dump-config", tmp_path / "train.yaml", "--scheduler", "warmup_linear",
                         "--learning-rate", str(LR))
    assert status == 0, err
    doc = yaml.safe_load((tmp_path / "train.yaml").read_text())
    training = doc["training_config"]
    assert training["model_type"] == "llama" and training["model_path"] == str(out)
    assert training["tokenizer_path"] == str(tmp_path / "tok.json") and training["tokenizer_type"] == "bpe"
    assert training["scheduler_type"] == "warmup_linear" and training["learning_rate"] == LR
    for required in ("seed", "model_save_interval", "batch_size", "num_epochs", "max_steps", "weight_decay"):
        assert required in training
    assert training["transformer_config"] == {
        "num_heads": cfg["num_attention_heads"], "num_groups": cfg["num_key_value_heads"],
        "embedding_dim": cfg["hidden_size"], "intermediate_dim": cfg["intermediate_size"], "dropout_prob": 0.0,
        "num_blocks": cfg["num_hidden_layers"], "vocab_size": 96,
        "max_sequence_length": cfg["max_position_embeddings"], "weight_tying": "enabled", "runner_type": "default",
        "theta": 500000.0,
        "rope_scaling": {"scaling_factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_context_length": 8192},
    }
    assert "llama/llama/tok_emb/weight/value/data" not in support.read_tt(out)


@pytest.mark.parametrize("learning_rate", [1e-5, 2e-10, 0.1, 3.0])
def test_yaml_numbers_read_back_as_numbers(cli, tmp_path, learning_rate):
    """repr gives 1e-05, which YAML 1.1 readers (PyYAML) take for a string: the mantissa gets a point."""
    llama_case(tmp_path, vocab=77)
    status, text, _ = cli("config", "llama", "--hf_model", tmp_path / "ckpt", "--learning-rate", str(learning_rate))
    assert status == 0
    training = yaml.safe_load(text)["training_config"]
    assert training["learning_rate"] == learning_rate and isinstance(training["learning_rate"], float)
    assert isinstance(training["transformer_config"]["theta"], float)


def test_config_command_for_gpt2(cli, tmp_path):
    cfg, _, _ = gpt2_case(tmp_path, vocab=100)
    status, text, _ = cli("config", "gpt2", "--hf_model", tmp_path / "ckpt", "--vocab-multiple", "64")
    assert status == 0
    transformer = yaml.safe_load(text)["training_config"]["transformer_config"]
    assert transformer == {"num_heads": cfg["n_head"], "embedding_dim": cfg["n_embd"], "dropout_prob": 0.0,
                           "num_blocks": cfg["n_layer"], "vocab_size": 128, "max_sequence_length": cfg["n_positions"],
                           "weight_tying": "enabled", "runner_type": "default",
                           "positional_embedding_type": "trainable"}
    assert cli("config", "gpt2", "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "c.yaml")[0] == 0
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["training_config"]["model_type"] == "gpt2"


@pytest.mark.parametrize("extra,feature", [
    ({"attention_bias": True}, "attention_bias is true"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}}, "RoPE scaling 'linear'"),
    ({"sliding_window": 16}, "sliding_window 16 is shorter than the context of 64 positions"),
])
def test_unrepresentable_config_is_one_error(cli, tmp_path, extra, feature):
    llama_case(tmp_path, **extra)
    for args in (["llama", "--no-init", "-o", tmp_path / "o"], ["config", "llama"],
                 ["llama", "-i", f"{support.FIXTURES}/llama-mini/init.msgpack", "-o", tmp_path / "o"]):
        status, _, err = cli(*args, "--hf_model", tmp_path / "ckpt")
        assert status == 1 and err.startswith("ttconv: error: ") and err.count("\n") == 1, err
        assert feature in err and "tt-train cannot represent" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tensor,feature", [("model.layers.1.self_attn.v_proj.bias", "biases"),
                                            ("model.layers.0.self_attn.q_norm.weight", "q/k norms")])
def test_unrepresentable_tensors_are_one_error(cli, tmp_path, tensor, feature):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    tensors[tensor] = np.ones(16, np.float32)
    support.write_checkpoint(tmp_path / "ckpt", cfg, tensors)
    status, _, err = cli("llama", "--no-init", "-o", tmp_path / "o", "--hf_model", tmp_path / "ckpt")
    assert status == 1 and err.count("\n") == 1 and feature in err and tensor in err
    assert not (tmp_path / "o").exists()
