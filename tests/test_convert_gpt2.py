"""GPT-2 conversion end to end against the fixture, a numpy reference and a forward pass."""
import json
import os

import numpy as np
import pytest

import support
from support import FIXTURES

GPT2_MINI = os.path.join(FIXTURES, "gpt2-mini")


def convert(convert_both, tmp_path, cfg, tensors, shapes, dtype="F32", prefix="transformer/transformer",
            use_flags=False):
    ckpt = tmp_path / "ckpt"
    stored = support.write_checkpoint(ckpt, cfg, tensors, dtype=dtype)
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(shapes, prefix=prefix))
    argv = ["gpt2", "-i", init, "-o", "OUT"] if use_flags else ["gpt2", init, "OUT"]
    out, err = convert_both(*argv, "--hf_model", ckpt)
    return stored, support.read_tt(out), err


def check(stored, tt, shapes, prefix="transformer/transformer"):
    for name, want in support.expected_gpt2(stored, shapes).items():
        np.testing.assert_array_equal(support.tt_tensor(tt, prefix, name), want, err_msg=name)


def test_fixture_matches_upstream_values(convert_both):
    out, _ = convert_both("gpt2", f"{GPT2_MINI}/init.msgpack", "OUT", "--hf_model", GPT2_MINI)
    support.assert_matches_upstream(out, f"{GPT2_MINI}/expected/reference.msgpack")


def test_fixture_reproduces_transformers_logits(convert_both):
    out, _ = convert_both("gpt2", "-i", f"{GPT2_MINI}/init.msgpack", "-o", "OUT", "--hf_model", GPT2_MINI)
    cfg = json.load(open(f"{GPT2_MINI}/config.json"))
    tt = support.read_tt(out)
    weights = {n: support.tt_tensor(tt, "transformer/transformer", n)
               for n in support.gpt2_tt_shapes(cfg, 320, 64)}
    ids = np.load(f"{GPT2_MINI}/expected/ids.npy")
    logits = support.gpt2_forward_tt(cfg, weights, ids)[:, : cfg["vocab_size"]]
    assert support.rel_error(logits, np.load(f"{GPT2_MINI}/expected/hf_logits.npy")) < 1e-4


def test_padding_unprefixed_names_and_mask_buffers(convert_both, tmp_path):
    cfg = support.gpt2_config(vocab=100)
    tensors = support.gpt2_tensors(cfg, prefix="", mask_buffers=True)
    shapes = support.gpt2_tt_shapes(cfg, 128, 48)
    stored, tt, err = convert(convert_both, tmp_path, cfg, tensors, shapes)
    check(stored, tt, shapes)
    assert not support.tt_tensor(tt, "transformer/transformer", "fc/weight")[100:].any()
    assert "not used" not in err


def test_untied_tok_emb_and_lm_head(convert_both, tmp_path):
    cfg = support.gpt2_config()
    tensors = support.gpt2_tensors(cfg, lm_head=True)
    shapes = support.gpt2_tt_shapes(cfg, 128, 48, tied=False)
    stored, tt, _ = convert(convert_both, tmp_path, cfg, tensors, shapes, use_flags=True)
    check(stored, tt, shapes)
    np.testing.assert_array_equal(support.tt_tensor(tt, "transformer/transformer", "fc/weight")[:100],
                                  stored["lm_head.weight"])


def test_short_tt_context_crops_pos_emb_with_notice(convert_both, tmp_path):
    cfg = support.gpt2_config(positions=48)
    shapes = support.gpt2_tt_shapes(cfg, 128, 20)
    stored, tt, err = convert(convert_both, tmp_path, cfg, support.gpt2_tensors(cfg), shapes)
    check(stored, tt, shapes)
    assert "keeping the first 20 rows" in err


def test_more_than_twelve_layers_and_bf16(convert_both, tmp_path):
    cfg = support.gpt2_config(layers=14, embd=16, heads=2)
    shapes = support.gpt2_tt_shapes(cfg, 128, 48)
    stored, tt, _ = convert(convert_both, tmp_path, cfg, support.gpt2_tensors(cfg), shapes, dtype="BF16")
    check(stored, tt, shapes)
    weights = {n: support.tt_tensor(tt, "transformer/transformer", n) for n in shapes}
    logits = support.gpt2_forward_tt(cfg, weights, np.array([1, 5, 9, 99]))
    assert np.isfinite(logits).all()


def test_longer_tt_context_is_an_error(cli, tmp_path):
    cfg = support.gpt2_config(positions=48)
    support.write_checkpoint(tmp_path / "ckpt", cfg, support.gpt2_tensors(cfg))
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(support.gpt2_tt_shapes(cfg, 128, 64), prefix="transformer/transformer"))
    status, _, err = cli("gpt2", init, tmp_path / "out.msgpack", "--hf_model", tmp_path / "ckpt")
    assert status == 1
    assert "pos_emb" in err and "[64, 32]" in err and "[48, 32]" in err and "context is longer" in err
    assert not (tmp_path / "out.msgpack").exists()


@pytest.mark.parametrize("layers_in_tt", [1, 3])
def test_layer_count_mismatch_is_an_error(cli, tmp_path, layers_in_tt):
    cfg = support.gpt2_config(layers=2)
    support.write_checkpoint(tmp_path / "ckpt", cfg, support.gpt2_tensors(cfg))
    init = tmp_path / "init.msgpack"
    tt_cfg = dict(cfg, n_layer=layers_in_tt)
    init.write_bytes(support.init_file_bytes(support.gpt2_tt_shapes(tt_cfg, 128, 48), prefix="transformer/transformer"))
    status, _, err = cli("gpt2", init, tmp_path / "out.msgpack", "--hf_model", tmp_path / "ckpt")
    assert status == 1
    assert f"has {layers_in_tt} gpt2 blocks but the checkpoint has 2 layers" in err
