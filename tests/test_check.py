"""`ttconv check` and `--meta_style auto`, on tiny models trained by tests/trained/make_trained.py,
on random weights, and against the logits transformers computed for the fixtures."""
import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import support
from ttconv.hf.checkpoint import Checkpoint
from ttconv import families
from ttconv.models import HfModel, LogitStats, head_chunks

TRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained")
# The tiny models learned this text; on text unlike it (the built-in sample) they are barely better
# than chance, so the tests that tell q/k layouts apart run on it.
CORPUS = os.path.join(TRAINED, "corpus.txt")


def trained(name):
    with open(os.path.join(TRAINED, name, "expected.json")) as f:
        return os.path.join(TRAINED, name), json.load(f)


def one_error_line(err):
    return err.startswith("ttconv: ") and err.count("\n") == 1 and "Traceback" not in err


def convert(cli, family, model, out, *extra):
    status, _, err = cli(family, "--no-init", "-o", out, "--hf_model", model, "--layout", "model", "-q", *extra)
    assert status == 0, err
    return out


def run_check(cli, family, tt_file, model, *extra):
    status, out, err = cli("check", family, tt_file, "--hf_model", model, "--json", *extra)
    return status, (json.loads(out) if out else None), err


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_hf_side_reproduces_transformers_logits(family):
    folder = os.path.join(support.FIXTURES, f"{family}-mini")
    ids = np.load(os.path.join(folder, "expected", "ids.npy"))
    expected = np.load(os.path.join(folder, "expected", "hf_logits.npy"))
    ckpt = Checkpoint(folder)
    family = families.get(family)
    shape = family.model_shape(ckpt)
    model = HfModel(ckpt, family, shape, family.norm_epsilon(ckpt.config))
    logits = model.final_states(ids)[0] @ model.head_rows(0, shape.vocab_size).T
    assert support.rel_error(logits, expected.reshape(logits.shape)) < 1e-4


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_correct_conversion_of_a_trained_model_checks(cli, tmp_path, family):
    model, expected = trained(family)
    tt_file = convert(cli, family, model, tmp_path / "tt.msgpack")
    status, result, err = run_check(cli, family, tt_file, model)
    assert status == 0, err
    assert set(result) >= {"tt_loss", "hf_loss", "max_abs_logit_diff", "top1_agreement", "tokens", "ok"}
    assert result["ok"] and result["top1_agreement"] == 1.0 and result["tokens"] == expected["sample_tokens"]
    assert result["hf_loss"] == pytest.approx(expected["sample_loss"], rel=1e-4)
    assert result["tt_loss"] == pytest.approx(result["hf_loss"], rel=1e-4)
    status, own_text, err = run_check(cli, family, tt_file, model, "--text", CORPUS)
    assert status == 0 and own_text["ok"], err
    assert own_text["hf_loss"] < 2.0  # trained: far below log(vocab) = 6 on the text it learned


def test_wrong_layout_conversion_fails_the_check(cli, tmp_path):
    model, _ = trained("llama")
    tt_file = convert(cli, "llama", model, tmp_path / "tt.msgpack", "--meta_style")
    status, result, err = run_check(cli, "llama", tt_file, model, "--text", CORPUS)
    assert status == 1 and not result["ok"] and result["tt_loss"] > result["hf_loss"] * 2
    assert one_error_line(err) and err.startswith("ttconv: check failed: tt loss")


def meta_copy(model, dest):
    """The trained Llama with its q/k rows interleaved, as a Meta-style checkpoint holds them."""
    shutil.copytree(model, dest)
    tensors = load_file(f"{model}/model.safetensors")
    cfg = json.load(open(f"{model}/config.json"))
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    for name in list(tensors):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            tensors[name] = support.interleave_heads(tensors[name], tensors[name].shape[0] // d)
    save_file(tensors, f"{dest}/model.safetensors")
    return dest


def test_meta_style_auto_picks_each_layout(cli, tmp_path):
    model, _ = trained("llama")
    meta = meta_copy(model, tmp_path / "meta")
    for source, chosen in ((model, "Hugging Face layout"), (meta, "Meta-interleaved")):
        out = tmp_path / f"{os.path.basename(str(source))}.msgpack"
        status, _, err = cli("llama", "--no-init", "-o", out, "--hf_model", source, "--layout", "model",
                             "--meta_style", "auto", "--text", CORPUS)
        assert status == 0, err
        assert "q/k rows read as they are: loss" in err and chosen in err
        status, result, err = run_check(cli, "llama", out, source, "--text", CORPUS)
        assert status == 0 and result["ok"], err
    # interleaved rows copied as they are == HF rows interleaved by the conversion
    assert (tmp_path / "meta.msgpack").read_bytes() == (tmp_path / "llama.msgpack").read_bytes()


def test_meta_style_auto_on_the_built_in_sample(cli, tmp_path):
    model, expected = trained("llama")
    status, _, err = cli("llama", "--no-init", "-o", tmp_path / "o", "--hf_model", model, "--meta_style", "auto")
    assert status == 0 and "Hugging Face layout: convert without --meta_style" in err
    assert f"q/k rows read as they are: loss {expected['sample_loss']:.4f} nats" in err


def test_meta_style_auto_refuses_random_weights(cli, tmp_path):
    mini = os.path.join(support.FIXTURES, "llama-mini")
    status, _, err = cli("llama", "--no-init", "-o", tmp_path / "o", "--hf_model", mini, "--meta_style", "auto")
    assert status == 1 and "too close to call" in err and "give --meta_style or leave it out" in err
    assert not (tmp_path / "o").exists()


def test_bf16_checkpoint_is_checked_in_float32(cli, tmp_path):
    model, _ = trained("llama")
    shutil.copytree(model, tmp_path / "bf16")
    tensors = load_file(f"{model}/model.safetensors")
    support.write_checkpoint(tmp_path / "bf16", json.load(open(f"{model}/config.json")), tensors, dtype="BF16")
    tt_file = convert(cli, "llama", tmp_path / "bf16", tmp_path / "tt.msgpack")
    status, result, err = run_check(cli, "llama", tt_file, tmp_path / "bf16")
    assert status == 0 and result["ok"] and result["max_abs_logit_diff"] < 1e-3, err


def test_text_file_tokens_and_context_cap(cli, tmp_path):
    model, _ = trained("gpt2")
    tt_file = convert(cli, "gpt2", model, tmp_path / "tt.msgpack")
    text = tmp_path / "text.txt"
    text.write_text(open(CORPUS).read())
    status, result, _ = run_check(cli, "gpt2", tt_file, model, "--text", text, "--tokens", "40")
    assert status == 0 and result["tokens"] == 40
    status, result, err = run_check(cli, "gpt2", tt_file, model, "--text", text, "--tokens", "1000")
    assert status == 0 and result["tokens"] == 128 and "the model's context is 128; using 128" in err
    status, out, _ = cli("check", "gpt2", tt_file, "--hf_model", model, "--text", text)
    assert status == 0 and "verdict: the same model" in out and "perplexity" in out


@pytest.mark.parametrize("case", ["other model", "other heads", "no tokenizer", "short text", "missing file"])
def test_bad_input_is_one_line(cli, tmp_path, case):
    model, _ = trained("llama")
    tt_file = convert(cli, "llama", model, tmp_path / "tt.msgpack")
    args = ["check", "llama", tt_file, "--hf_model", model]
    if case == "other model":
        args = ["check", "llama", f"{support.FIXTURES}/llama-mini/init.msgpack", "--hf_model", model]
        expected = "describe different models"
    elif case == "other heads":
        shutil.copytree(model, tmp_path / "heads")
        cfg = json.load(open(tmp_path / "heads" / "config.json"))
        cfg["num_key_value_heads"] = cfg["num_attention_heads"]
        json.dump(cfg, open(tmp_path / "heads" / "config.json", "w"))
        args = ["check", "llama", tt_file, "--hf_model", tmp_path / "heads"]
        expected = "kv_linear/weight has 64 rows in the tt file, the checkpoint's config says 128"
    elif case == "no tokenizer":
        shutil.copytree(model, tmp_path / "bare")
        os.unlink(tmp_path / "bare" / "tokenizer.json")
        args = ["check", "llama", tt_file, "--hf_model", tmp_path / "bare"]
        expected = "no tokenizer.json"
    elif case == "short text":
        (tmp_path / "t.txt").write_text("a")
        args += ["--text", tmp_path / "t.txt"]
        expected = "at least 2 are needed"
    else:
        args = ["check", "llama", tmp_path / "absent.msgpack", "--hf_model", model]
        expected = "no such file"
    status, _, err = cli(*args)
    assert status == 1 and one_error_line(err) and expected in err, err


def test_python_api_returns_the_numbers(cli, tmp_path):
    import ttconv

    model, expected = trained("gpt2")
    tt_file = convert(cli, "gpt2", model, tmp_path / "tt.msgpack")
    result = ttconv.check("gpt2", str(tt_file), model)
    assert result.ok and result.hf_loss == pytest.approx(expected["sample_loss"], rel=1e-4)
    assert result.as_dict()["tokens"] == expected["sample_tokens"]


def test_logit_stats_over_chunks_equal_the_whole_vocabulary():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((9, 70)) * 5
    logits[3, [10, 50]] = 40.0  # a tie: the first index wins, as in a whole-row argmax
    ids = rng.integers(0, 70, 9)
    stats = LogitStats(ids)
    for first, last in [(0, 7), (7, 32), (32, 33), (33, 70)]:
        stats.add(first, logits[:, first:last])
    shifted = logits[:-1] - logits[:-1].max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(8), ids[1:]])
    assert abs(stats.loss() - expected) < 1e-12
    assert stats.argmax.tolist() == logits.argmax(axis=1).tolist() and stats.argmax[3] == 10


def test_head_chunks_cover_the_vocabulary_once():
    chunks = head_chunks(128256, 3072)
    assert chunks[0][0] == 0 and chunks[-1][1] == 128256
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    assert max(last - first for first, last in chunks) * 3072 * 4 <= 1 << 25


def test_check_takes_the_tt_file_with_i(cli, tmp_path):
    model, _ = trained("gpt2")
    tt_file = convert(cli, "gpt2", model, tmp_path / "tt.msgpack")
    status, out, err = cli("check", "gpt2", "-i", tt_file, "--hf_model", model, "--json")
    assert status == 0, err
    assert json.loads(out) == run_check(cli, "gpt2", tt_file, model)[1]
    status, _, err = cli("check", "gpt2", tt_file, "-i", tmp_path / "other.msgpack", "--hf_model", model)
    assert status == 1 and "name different inputs" in err and err.count("\n") == 1
