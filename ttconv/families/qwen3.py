"""Qwen3 (Qwen3-0.6B to 8B and same-shaped models): everything ttconv knows of the family.

tt-train has Qwen3 only since it saves checkpoint directories, so it is written as directories
only (qwen3/qwen3). Its blocks are Llama's with q/k norms per head before RoPE (their vectors
permuted like the q/k rows) and k and v apart; its RoPE needs a head_dim that is a multiple of
32, at most 256. ttml checkpoints hold it under Qwen3/ in three naming schemes (blocks/{i}/,
or model/layers/{i}/ mirroring Hugging Face's names; k and v fused as kv_proj or apart).
"""
from ..hf.from_header import decoder_config, rope_model_shapes
from ..hf.hfconfig import refuse, rope_model_shape
from ..hf.tokenizer import llama_tokenizer_text
from ..mapping import BIASES, DECODER_HF_ORDER, ROTARY_BUFFERS
from ..tt.ttbuild import rope_model_ends
from ..tt.ttconfig import rope_transformer_config
from .base import Family

TABLE = (
    # tt name                                          checkpoint source(s)                                    rows
    ("tok_emb/weight",                                 "model.embed_tokens.weight",                            "pad"),
    ("fc/weight",                                      "lm_head.weight | model.embed_tokens.weight",           "pad"),
    ("ln_fc/gamma",                                    "model.norm.weight",                                    ""),
    ("qwen3_block_{i}/input_layernorm/gamma",          "model.layers.{i}.input_layernorm.weight",              ""),
    ("qwen3_block_{i}/post_attention_layernorm/gamma", "model.layers.{i}.post_attention_layernorm.weight",     ""),
    ("qwen3_block_{i}/self_attn/q_linear/weight",      "model.layers.{i}.self_attn.q_proj.weight:rope_q",      ""),
    ("qwen3_block_{i}/self_attn/k_linear/weight",      "model.layers.{i}.self_attn.k_proj.weight:rope_kv",     ""),
    ("qwen3_block_{i}/self_attn/v_linear/weight",      "model.layers.{i}.self_attn.v_proj.weight",             ""),
    ("qwen3_block_{i}/self_attn/out_linear/weight",    "model.layers.{i}.self_attn.o_proj.weight",             ""),
    ("qwen3_block_{i}/self_attn/q_norm/gamma",         "model.layers.{i}.self_attn.q_norm.weight:rope_norm",   ""),
    ("qwen3_block_{i}/self_attn/k_norm/gamma",         "model.layers.{i}.self_attn.k_norm.weight:rope_norm",   ""),
    ("qwen3_block_{i}/mlp/w1/weight",                  "model.layers.{i}.mlp.gate_proj.weight",                ""),
    ("qwen3_block_{i}/mlp/w2/weight",                  "model.layers.{i}.mlp.down_proj.weight",                ""),
    ("qwen3_block_{i}/mlp/w3/weight",                  "model.layers.{i}.mlp.up_proj.weight",                  ""),
)

_TTML_BLOCK = (
    # ttml name within a block (blocks/{i}/ or model/layers/{i}/)   fused   canonical name (under Qwen3/)
    ("input_layernorm/weight",           "",   "qwen3_block_{i}/input_layernorm/gamma"),
    ("post_attention_layernorm/weight",  "",   "qwen3_block_{i}/post_attention_layernorm/gamma"),
    ("self_attn/q_proj/weight",          "",   "qwen3_block_{i}/self_attn/q_linear/weight"),
    ("self_attn/k_proj/weight",          "",   "qwen3_block_{i}/self_attn/k_linear/weight"),
    ("self_attn/v_proj/weight",          "",   "qwen3_block_{i}/self_attn/v_linear/weight"),
    ("self_attn/kv_proj/weight",         "kv", "qwen3_block_{i}/self_attn/k_linear/weight = k; "
                                               "qwen3_block_{i}/self_attn/v_linear/weight = v"),
    ("self_attn/o_proj/weight",          "",   "qwen3_block_{i}/self_attn/out_linear/weight"),
    ("self_attn/q_norm/weight",          "",   "qwen3_block_{i}/self_attn/q_norm/gamma"),
    ("self_attn/k_norm/weight",          "",   "qwen3_block_{i}/self_attn/k_norm/gamma"),
    ("mlp/gate_proj/weight",             "",   "qwen3_block_{i}/mlp/w1/weight"),
    ("mlp/up_proj/weight",               "",   "qwen3_block_{i}/mlp/w3/weight"),
    ("mlp/down_proj/weight",             "",   "qwen3_block_{i}/mlp/w2/weight"),
)
TTML_TABLE = (
    ("tok_emb/weight",             "", "tok_emb/weight"),
    ("fc/weight",                  "", "fc/weight"),
    ("ln_fc/weight",               "", "ln_fc/gamma"),
    # the older names that mirror Hugging Face's
    ("model/embed_tokens/weight",  "", "tok_emb/weight"),
    ("lm_head/weight",             "", "fc/weight"),
    ("model/norm/weight",          "", "ln_fc/gamma"),
) + tuple((f"{block}/{name}", fused, canonical) for block in ("blocks/{i}", "model/layers/{i}")
          for name, fused, canonical in _TTML_BLOCK)

# Qwen3's block names where the Llama block (which the RoPE forward pass reads) has the same thing.
AS_LLAMA = (("input_layernorm/", "attention_norm/"), ("post_attention_layernorm/", "mlp_norm/"),
            ("self_attn/", "attention/"))

HELP = """\
Fill a tt-train Qwen3 checkpoint directory (a model dump or a training state) with the
weights of a Qwen3 checkpoint (Qwen3-0.6B to 8B and same-shaped models), or build one from
config.json. Directories only: tt-train has Qwen3 only since it saves checkpoint
directories. q/k rows and the q/k norm weights are put in tt-train's adjacent-pair RoPE
order, the vocabulary is zero-padded to a multiple of 32."""


def _as_llama_names(name):
    for qwen3, llama in AS_LLAMA:
        if name.startswith(qwen3):
            return llama + name[len(qwen3):]
    return name


class Qwen3Family(Family):
    name = "qwen3"
    display = "Qwen3"
    summary = "convert a Qwen3-family checkpoint into a checkpoint directory"
    description = HELP
    default_hf_model = "Qwen/Qwen3-0.6B"
    default_output = "data/qwen3_exported"
    config_model_path = "data/tt_model"
    formats = ("flatbuffer",)
    model_types = ("qwen3",)
    architecture_prefixes = ("Qwen3",)
    hf_order = DECODER_HF_ORDER
    header_epsilon = ("rms_norm_eps", 1e-6)  # model_builders' Qwen3
    table = TABLE
    ignored = (ROTARY_BUFFERS,)
    unrepresentable = (BIASES,)
    block_0 = "qwen3_block_0/"
    model_root = "qwen3"
    ttml_root = "Qwen3"
    ttml_table = TTML_TABLE
    rope = True

    input_metavar = "INPUT_DIR"
    input_help = ("checkpoint directory to fill: a model dump (-s) or a training state tt-train saved (default: none; "
                  "the directory is built from config.json)")
    output_metavar = "OUTPUT_DIR"
    output_help = f"output directory (default: {default_output})"
    tokenizer_help = "also write the tokenizer.json that tt-train reads to this path"
    format_help = "flatbuffer (the default and the only choice: no tt-train that reads msgpack has Qwen3)"

    def read_shape(self, ckpt, where):
        """A layer attends through sliding_window when layer_types says "sliding_attention" or, in configs
        without layer_types, when use_sliding_window is on from layer max_window_layers on."""
        config = ckpt.config
        layers = ckpt.config_int("num_hidden_layers")
        if config.get("layer_types"):
            sliding = "sliding_attention" in config["layer_types"]
        else:
            sliding = bool(config.get("use_sliding_window", False)) and \
                int(config.get("max_window_layers", layers) or 0) < layers
        shape = rope_model_shape(ckpt, where, self, sliding)
        if shape.head_dim % 32 or not 0 < shape.head_dim <= 256:
            refuse(where, f"head_dim {shape.head_dim} (tt-train's RoPE needs a multiple of 32 up to 256)")
        if shape.embedding_dim % 32:
            refuse(where, f"hidden_size {shape.embedding_dim} (tt-train's Qwen3 needs a multiple of 32)")
        return shape

    def hf_config(self, fields, tied, sizes, where):
        config = decoder_config(fields, tied, sizes, where, "Qwen3ForCausalLM", self.name, 1000000.0,
                                self.header_epsilon)
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=config["num_hidden_layers"])
        return config

    def hf_shapes(self, config):
        return rope_model_shapes(config, qk_norms=True)

    def header_sizes(self, params, block):
        norm = params.get(block + "self_attn/q_norm/gamma")
        return {"intermediate": params[block + "mlp/w1/weight"].rows,
                "head_dim": norm.cols if norm is not None else None}

    def transformer_config(self, shape, vocab_multiple):
        return rope_transformer_config(shape, vocab_multiple, head_dim=True, rms_norm_eps=True)

    def tokenizer_text(self, model_dir):
        return llama_tokenizer_text(model_dir)

    def tt_tensors(self, shape, vocab_rows):
        e, d, inner = shape.embedding_dim, shape.head_dim, shape.intermediate_dim
        tensors = rope_model_ends(shape, vocab_rows)
        for i in range(shape.num_blocks):
            block = f"qwen3_block_{i}/"
            tensors += [
                (block + "input_layernorm/gamma", 1, e),
                (block + "post_attention_layernorm/gamma", 1, e),
                (block + "self_attn/q_linear/weight", shape.num_heads * d, e),
                (block + "self_attn/k_linear/weight", shape.num_groups * d, e),
                (block + "self_attn/v_linear/weight", shape.num_groups * d, e),
                (block + "self_attn/out_linear/weight", e, shape.num_heads * d),
                (block + "self_attn/q_norm/gamma", 1, d),
                (block + "self_attn/k_norm/gamma", 1, d),
                (block + "mlp/w1/weight", inner, e),
                (block + "mlp/w2/weight", e, inner),
                (block + "mlp/w3/weight", inner, e),
            ]
        return tensors

    def tt_expected_rows(self, shape):
        return {"qwen3_block_0/self_attn/q_linear/weight": shape.num_heads * shape.head_dim,
                "qwen3_block_0/self_attn/k_linear/weight": shape.num_groups * shape.head_dim,
                "qwen3_block_0/mlp/w1/weight": shape.intermediate_dim}

    def tt_forward(self, model, ids, progress=None):
        from ..models import tt_rope_forward

        return tt_rope_forward(model, ids, progress, rename=_as_llama_names)

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        from ..models import hf_rope_forward

        return hf_rope_forward(model, ids, progress, adjacent_pairs)

    def tokenizer_only(self, args, given_in, given_out):
        return False  # no upstream script to follow: -t is always in addition


QWEN3 = Qwen3Family()
