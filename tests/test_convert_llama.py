"""Llama conversion end to end: fixture against upstream output and transformers' logits,
constructed checkpoints against a loop-based numpy reference and two forward passes."""
import json
import os

import numpy as np
import pytest

import support
from support import FIXTURES

LLAMA_MINI = os.path.join(FIXTURES, "llama-mini")


def convert(convert_both, tmp_path, cfg, tensors, shapes, dtype="F32", shards=1, prefix="llama/llama",
            meta_style=False, **init_kw):
    ckpt = tmp_path / "ckpt"
    stored = support.write_checkpoint(ckpt, cfg, tensors, dtype=dtype, shards=shards)
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(shapes, prefix=prefix, **init_kw))
    argv = ["llama", "-i", init, "-o", "OUT", "--hf_model", ckpt] + (["--meta_style"] if meta_style else [])
    out, err = convert_both(*argv)
    return stored, support.read_tt(out), init, out, err


def check_against_reference(cfg, stored, tt, shapes, prefix="llama/llama", meta_style=False):
    expected = support.expected_llama(cfg, stored, shapes, meta_style)
    for name, want in expected.items():
        got = support.tt_tensor(tt, prefix, name)
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_fixture_matches_upstream_values(convert_both):
    out, _ = convert_both("llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", "OUT", "--hf_model", LLAMA_MINI)
    support.assert_matches_upstream(out, f"{LLAMA_MINI}/expected/reference.msgpack")


def test_fixture_reproduces_transformers_logits(convert_both):
    out, _ = convert_both("llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", "OUT", "--hf_model", LLAMA_MINI)
    cfg = json.load(open(f"{LLAMA_MINI}/config.json"))
    tt = support.read_tt(out)
    weights = {name: support.tt_tensor(tt, "llama/llama", name)
               for name in support.llama_tt_shapes(cfg, 256)}
    ids = np.load(f"{LLAMA_MINI}/expected/ids.npy")
    logits = support.llama_forward_tt(cfg, weights, ids)[:, : cfg["vocab_size"]]
    assert support.rel_error(logits, np.load(f"{LLAMA_MINI}/expected/hf_logits.npy")) < 1e-4


def test_output_is_float32_and_non_data_entries_byte_identical(convert_both):
    init = f"{LLAMA_MINI}/init.msgpack"
    out, _ = convert_both("llama", "-i", init, "-o", "OUT", "--hf_model", LLAMA_MINI)
    before, after = support.tt_raw_entries(init), support.tt_raw_entries(out)
    assert [k for k, _ in before] == [k for k, _ in after]
    for (key, raw_in), (_, raw_out) in zip(before, after):
        if key.endswith("/value/data"):
            assert raw_out[:2] == raw_in[:2]  # [variant, ...
            header = 1 if raw_out[2] < 0xdc else (3 if raw_out[2] == 0xdc else 5)
            payload = raw_out[2 + header:]
            assert payload[::5] == b"\xca" * (len(payload) // 5), key
        else:
            assert raw_out == raw_in, key
    values = sum(len(v[1]) for k, v in support.read_tt(out).items() if k.endswith("/value/data"))
    assert os.path.getsize(out) < values * 5 + os.path.getsize(init) - values  # ~5 bytes a value


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, None), (4, 4, None), (4, 1, None), (2, 2, 24)])
def test_attention_layouts_against_reference_and_forward(convert_both, tmp_path, heads, kv_heads, head_dim):
    cfg = support.llama_config(heads=heads, kv_heads=kv_heads, head_dim=head_dim)
    tensors = support.llama_tensors(cfg)
    shapes = support.llama_tt_shapes(cfg, 96)
    stored, tt, _, _, _ = convert(convert_both, tmp_path, cfg, tensors, shapes)
    check_against_reference(cfg, stored, tt, shapes)
    weights = {n: support.tt_tensor(tt, "llama/llama", n) for n in shapes}
    ids = np.array([3, 17, 5, 90, 44, 2, 61])
    tt_logits = support.llama_forward_tt(cfg, weights, ids)
    hf_logits = support.llama_forward_hf(cfg, stored, ids)
    assert support.rel_error(tt_logits, hf_logits) < 1e-9


def test_wrong_rope_head_count_would_be_caught_by_forward_check(tmp_path):
    cfg = support.llama_config(heads=4, kv_heads=2)
    tensors = support.llama_tensors(cfg)
    shapes = support.llama_tt_shapes(cfg, 96)
    weights = support.expected_llama(cfg, tensors, shapes)
    for i in range(cfg["num_hidden_layers"]):
        k = tensors[f"model.layers.{i}.self_attn.k_proj.weight"]
        v = tensors[f"model.layers.{i}.self_attn.v_proj.weight"]
        weights[f"llama_block_{i}/attention/kv_linear/weight"] = np.concatenate(
            [support.interleave_heads(k, 4), v])
    ids = np.array([3, 17, 5, 90, 44, 2, 61])
    assert support.rel_error(support.llama_forward_tt(cfg, weights, ids),
                             support.llama_forward_hf(cfg, tensors, ids)) > 1e-3


@pytest.mark.parametrize("dtype,shards", [("BF16", 2), ("F16", 3), ("F32", 2)])
def test_half_precision_and_sharded_checkpoints(convert_both, tmp_path, dtype, shards):
    cfg = support.llama_config()
    shapes = support.llama_tt_shapes(cfg, 96)
    stored, tt, _, _, _ = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes,
                                  dtype=dtype, shards=shards)
    check_against_reference(cfg, stored, tt, shapes)


def test_vocab_not_multiple_of_32_is_zero_padded(convert_both, tmp_path):
    cfg = support.llama_config(vocab=77)
    shapes = support.llama_tt_shapes(cfg, 96)
    stored, tt, _, _, _ = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes)
    check_against_reference(cfg, stored, tt, shapes)
    fc = support.tt_tensor(tt, "llama/llama", "fc/weight")
    assert not fc[77:].any() and fc[:77].any()


def test_tied_checkpoint_and_tied_tt_layout(convert_both, tmp_path):
    cfg = support.llama_config(tie=True)
    tensors = support.llama_tensors(cfg, tie=True)
    shapes = support.llama_tt_shapes(cfg, 96, tied=True)
    assert "tok_emb/weight" not in shapes
    stored, tt, _, _, err = convert(convert_both, tmp_path, cfg, tensors, shapes)
    check_against_reference(cfg, stored, tt, shapes)
    np.testing.assert_array_equal(support.tt_tensor(tt, "llama/llama", "fc/weight"),
                                  stored["model.embed_tokens.weight"])
    assert "not used" not in err


def test_tied_checkpoint_into_untied_tt_layout(convert_both, tmp_path):
    cfg = support.llama_config(tie=True)
    shapes = support.llama_tt_shapes(cfg, 96)
    stored, tt, _, _, _ = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg, tie=True), shapes)
    check_against_reference(cfg, stored, tt, shapes)


def test_meta_style_copies_q_and_k_unchanged(convert_both, tmp_path):
    cfg = support.llama_config()
    shapes = support.llama_tt_shapes(cfg, 96)
    stored, tt, _, _, _ = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes,
                                  meta_style=True)
    check_against_reference(cfg, stored, tt, shapes, meta_style=True)
    np.testing.assert_array_equal(support.tt_tensor(tt, "llama/llama", "llama_block_0/attention/q_linear/weight"),
                                  stored["model.layers.0.self_attn.q_proj.weight"])


def test_old_prefix_str_shapes_float64_init_and_other_variant_indices(convert_both, tmp_path):
    cfg = support.llama_config()
    shapes = support.llama_tt_shapes(cfg, 96)
    variants = {"shape": 7, "int": 4, "bool": 1, "floats": 11}
    stored, tt, init, out, _ = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes,
                                       prefix="transformer/llama", shape_as="str", float_style="float64",
                                       variants=variants)
    check_against_reference(cfg, stored, tt, shapes, prefix="transformer/llama")
    before = dict(support.tt_raw_entries(init))
    for key, raw in support.tt_raw_entries(out):
        if not key.endswith("/value/data"):
            assert raw == before[key]
        else:
            assert raw[1] == 11


def test_untouched_and_unknown_entries_are_copied_and_listed(convert_both, tmp_path):
    import msgpack

    cfg = support.llama_config()
    shapes = support.llama_tt_shapes(cfg, 96)
    extra = [("optimizer/step", msgpack.packb([6, 1234])),
             ("llama/llama/lora_a/weight/value/shape", msgpack.packb([12, np.array([1, 1, 2, 3], "<u4").tobytes()])),
             ("llama/llama/lora_a/weight/value/data", msgpack.packb([10, [0.5, 1, -2, 0.25, 0, 3]],
                                                                    use_single_float=True))]
    stored, tt, init, out, err = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes,
                                         extra_entries=extra)
    assert "llama/llama/lora_a/weight/value/data" in err
    before = dict(support.tt_raw_entries(init))
    after = dict(support.tt_raw_entries(out))
    for key, _ in extra:
        assert after[key] == before[key]


def test_arrays_longer_than_65535_values(convert_both, tmp_path):
    cfg = support.llama_config(vocab=2500, hidden=32, layers=10, heads=2, kv_heads=1, inter=40)
    shapes = support.llama_tt_shapes(cfg, 2528)
    stored, tt, init, _, _ = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes)
    check_against_reference(cfg, stored, tt, shapes)


def test_malformed_untouched_entry_is_copied_but_malformed_mapped_one_stops(convert_both, cli, tmp_path):
    import msgpack

    cfg = support.llama_config()
    shapes = support.llama_tt_shapes(cfg, 96)
    orphan = [("llama/llama/orphan/weight/value/data", msgpack.packb([10, [1, 2, 3]]))]
    stored, tt, init, out, err = convert(convert_both, tmp_path, cfg, support.llama_tensors(cfg), shapes,
                                         extra_entries=orphan)
    check_against_reference(cfg, stored, tt, shapes)
    assert tt["llama/llama/orphan/weight/value/data"] == [10, [1, 2, 3]]
    raw = init.read_bytes()
    shape_key = msgpack.packb("llama/llama/ln_fc/gamma/value/shape")
    init.write_bytes(raw.replace(shape_key, msgpack.packb("llama/llama/ln_fc/gamma/value/shapE")))
    status, _, err = cli("llama", "-i", init, "-o", tmp_path / "bad.msgpack", "--hf_model", tmp_path / "ckpt")
    assert status == 1 and "llama/llama/ln_fc/gamma/value/data has no llama/llama/ln_fc/gamma/value/shape" in err


def test_llama_model_names_without_model_prefix(convert_both, tmp_path):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    bare = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in tensors.items()}
    shapes = support.llama_tt_shapes(cfg, 96)
    stored, tt, _, _, err = convert(convert_both, tmp_path, cfg, bare, shapes)
    check_against_reference(cfg, {("model." + k if k != "lm_head.weight" else k): v for k, v in stored.items()},
                            tt, shapes)
    assert "not used" not in err
