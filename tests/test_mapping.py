"""Plan building and prefixes (the tables themselves: test_families)."""
import pytest

from ttconv import families
from ttconv.errors import TtFileError
from ttconv.mapping import expand, find_prefix

LLAMA, GPT2 = families.get("llama"), families.get("gpt2")


def test_expand_once_per_layer():
    rows = expand(LLAMA.table, 3)
    assert len(rows) == 3 + 8 * 3
    assert rows["llama_block_2/attention/kv_linear/weight"] == (
        "model.layers.2.self_attn.k_proj.weight:rope_kv + model.layers.2.self_attn.v_proj.weight", "")
    assert rows["fc/weight"] == ("lm_head.weight | model.embed_tokens.weight", "pad")
    assert len(expand(GPT2.table, 14)) == 5 + 12 * 14


def params(*names):
    return {n: None for n in names}


def test_find_prefix_variants():
    assert find_prefix(params("llama/llama/fc/weight", "llama/llama/llama_block_0/mlp/w1/weight"), LLAMA, "f",
                       families.ALL) == "llama/llama"
    assert find_prefix(params("transformer/llama/fc/weight", "transformer/llama/llama_block_0/x"), LLAMA, "f",
                       families.ALL) == "transformer/llama"
    with pytest.raises(TtFileError, match="holds a GPT-2 model; use .ttconv gpt2."):
        find_prefix(params("t/t/fc/weight", "t/t/gpt_block_0/ln1/gamma"), LLAMA, "f", families.ALL)
    with pytest.raises(TtFileError, match="no recognisable tt-train gpt2"):
        find_prefix(params("a/b"), GPT2, "f", families.ALL)
