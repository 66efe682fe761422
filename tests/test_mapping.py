"""Mapping tables and plan building."""
import pytest

from ttconv.errors import TtFileError
from ttconv.mapping import GPT2_TABLE, LLAMA_TABLE, expand, find_prefix


def test_expand_once_per_layer():
    rows = expand(LLAMA_TABLE, 3)
    assert len(rows) == 3 + 8 * 3
    assert rows["llama_block_2/attention/kv_linear/weight"] == (
        "model.layers.2.self_attn.k_proj.weight:rope_kv + model.layers.2.self_attn.v_proj.weight", "")
    assert rows["fc/weight"] == ("lm_head.weight | model.embed_tokens.weight", "pad")
    assert len(expand(GPT2_TABLE, 14)) == 5 + 12 * 14


def test_tables_follow_the_spec_names():
    llama = {tt for tt, _, _ in LLAMA_TABLE}
    assert {"tok_emb/weight", "fc/weight", "ln_fc/gamma", "llama_block_{i}/attention/q_linear/weight",
            "llama_block_{i}/mlp/w3/weight"} <= llama
    gpt2 = dict((tt, src) for tt, src, _ in GPT2_TABLE)
    assert gpt2["gpt_block_{i}/mlp/fc2/weight"] == "h.{i}.mlp.c_proj.weight:T"
    assert gpt2["pos_emb/weight"] == "wpe.weight"


def params(*names):
    return {n: None for n in names}


def test_find_prefix_variants():
    assert find_prefix(params("llama/llama/fc/weight", "llama/llama/llama_block_0/mlp/w1/weight"), "llama", "f") \
        == "llama/llama"
    assert find_prefix(params("transformer/llama/fc/weight", "transformer/llama/llama_block_0/x"), "llama", "f") \
        == "transformer/llama"
    with pytest.raises(TtFileError, match="holds a GPT-2 model; use .ttconv gpt2."):
        find_prefix(params("t/t/fc/weight", "t/t/gpt_block_0/ln1/gamma"), "llama", "f")
    with pytest.raises(TtFileError, match="no recognisable tt-train gpt2"):
        find_prefix(params("a/b"), "gpt2", "f")
