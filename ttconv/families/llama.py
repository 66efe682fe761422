"""Llama (TinyLlama, Llama 2/3/3.x and same-shaped models): everything ttconv knows of the family.

tt-train's Llama: no biases, full attention over the whole context, Llama 3 style RoPE
scaling only, q/k rows permuted for its adjacent-pair RoPE, k and v fused into kv_linear
([K; V]); msgpack files hold it under llama/llama (training saves under transformer/llama),
directories under llama/llama, ttml checkpoints under Llama/ (fused qkv, kv or gate|up as the
recipe chose). A Llama-family checkpoint with q/k norms is a Qwen3.
"""
import os

from ..hf.from_header import decoder_config, rope_model_shapes
from ..hf.hfconfig import rope_model_shape
from ..hf.tokenizer import llama_tokenizer_text
from ..mapping import BIASES, DECODER_HF_ORDER, ROTARY_BUFFERS
from ..tt.ttbuild import rope_model_ends
from ..tt.ttconfig import rope_transformer_config
from .base import Family

DEFAULT_INIT = "data/tinyllama_init.msgpack"
DEFAULT_OUTPUT = "data/tinyllama_exported.msgpack"
DEFAULT_OUTPUT_DIR = "data/tinyllama_exported"

TABLE = (
    # tt name                                        checkpoint source(s)                                                                      rows
    ("tok_emb/weight",                               "model.embed_tokens.weight",                                                              "pad"),
    ("fc/weight",                                    "lm_head.weight | model.embed_tokens.weight",                                             "pad"),
    ("ln_fc/gamma",                                  "model.norm.weight",                                                                      ""),
    ("llama_block_{i}/attention_norm/gamma",         "model.layers.{i}.input_layernorm.weight",                                                ""),
    ("llama_block_{i}/mlp_norm/gamma",               "model.layers.{i}.post_attention_layernorm.weight",                                       ""),
    ("llama_block_{i}/attention/q_linear/weight",    "model.layers.{i}.self_attn.q_proj.weight:rope_q",                                        ""),
    ("llama_block_{i}/attention/kv_linear/weight",   "model.layers.{i}.self_attn.k_proj.weight:rope_kv + model.layers.{i}.self_attn.v_proj.weight", ""),
    ("llama_block_{i}/attention/out_linear/weight",  "model.layers.{i}.self_attn.o_proj.weight",                                               ""),
    ("llama_block_{i}/mlp/w1/weight",                "model.layers.{i}.mlp.gate_proj.weight",                                                  ""),
    ("llama_block_{i}/mlp/w2/weight",                "model.layers.{i}.mlp.down_proj.weight",                                                  ""),
    ("llama_block_{i}/mlp/w3/weight",                "model.layers.{i}.mlp.up_proj.weight",                                                    ""),
)

TTML_TABLE = (
    # ttml name (under Llama/)                  fused      canonical name (under Llama/) = parts
    ("tok_emb/weight",                          "",        "tok_emb/weight"),
    ("fc/weight",                               "",        "fc/weight"),
    ("ln_fc/gamma",                             "",        "ln_fc/gamma"),
    ("blocks/{i}/attention_norm/gamma",         "",        "llama_block_{i}/attention_norm/gamma"),
    ("blocks/{i}/mlp_norm/gamma",               "",        "llama_block_{i}/mlp_norm/gamma"),
    ("blocks/{i}/attention/q_linear/weight",    "",        "llama_block_{i}/attention/q_linear/weight"),
    ("blocks/{i}/attention/kv_linear/weight",   "kv",      "llama_block_{i}/attention/kv_linear/weight = k v"),
    ("blocks/{i}/attention/qkv_linear/weight",  "qkv",     "llama_block_{i}/attention/q_linear/weight = q; "
                                                           "llama_block_{i}/attention/kv_linear/weight = k v"),
    ("blocks/{i}/attention/out_linear/weight",  "",        "llama_block_{i}/attention/out_linear/weight"),
    ("blocks/{i}/mlp/w1/weight",                "",        "llama_block_{i}/mlp/w1/weight"),
    ("blocks/{i}/mlp/w2/weight",                "",        "llama_block_{i}/mlp/w2/weight"),
    ("blocks/{i}/mlp/w3/weight",                "",        "llama_block_{i}/mlp/w3/weight"),
    ("blocks/{i}/mlp/w_gate_up/weight",         "gate_up", "llama_block_{i}/mlp/w1/weight = gate; "
                                                           "llama_block_{i}/mlp/w3/weight = up"),
)

HELP = """\
Fill a tt-train Llama init file or checkpoint directory with the weights of a
Llama-family checkpoint (TinyLlama, Llama 2/3/3.x and same-shaped models), or build one
from config.json (--no-init; --format flatbuffer for a directory, as today's tt-train
loads). Same flags as llama_export.py. With only -t, just the tokenizer is written; with
-t and explicit -i (or --no-init) and -o, both."""


class LlamaFamily(Family):
    name = "llama"
    display = "Llama"
    summary = "convert a Llama-family checkpoint"
    description = HELP
    default_hf_model = "TinyLlama/TinyLlama_v1.1"
    model_types = ("llama",)
    reads_other_model_types = True
    hf_order = DECODER_HF_ORDER
    table = TABLE
    ignored = (ROTARY_BUFFERS,)
    unrepresentable = (BIASES, (r"(model\.)?layers\.\d+\.self_attn\.[qk]_norm\.weight", "q/k norms",
                                "; a Llama-family model with q/k norms is a Qwen3: use 'ttconv qwen3'"))
    block_0 = "llama_block_0/"
    load_prefix = "llama/llama"
    save_prefix = "transformer/llama"
    model_root = "llama"
    ttml_root = "Llama"
    ttml_table = TTML_TABLE
    meta_style = True
    rope = True

    input_help = ("what to fill: a msgpack init file, -s dump or training save, or a checkpoint directory "
                  f"(default: {DEFAULT_INIT}; when that does not exist, the output is built from config.json)")
    output_help = f"output file or directory (default: {DEFAULT_OUTPUT}, or {DEFAULT_OUTPUT_DIR} for a directory)"

    def read_shape(self, ckpt, where):
        return rope_model_shape(ckpt, where, self, ckpt.config.get("use_sliding_window", True))

    def hf_config(self, fields, tied, sizes, where):
        config = decoder_config(fields, tied, sizes, where, "LlamaForCausalLM", self.name, 10000.0, self.header_epsilon)
        config["mlp_bias"] = False
        return config

    def hf_shapes(self, config):
        return rope_model_shapes(config, qk_norms=False)

    def transformer_config(self, shape, vocab_multiple):
        return rope_transformer_config(shape, vocab_multiple)

    def tokenizer_text(self, model_dir):
        return llama_tokenizer_text(model_dir)

    def tt_tensors(self, shape, vocab_rows):
        e, d, inner = shape.embedding_dim, shape.head_dim, shape.intermediate_dim
        tensors = rope_model_ends(shape, vocab_rows)
        for i in range(shape.num_blocks):
            block = f"llama_block_{i}/"
            tensors += [
                (block + "attention_norm/gamma", 1, e),
                (block + "mlp_norm/gamma", 1, e),
                (block + "attention/q_linear/weight", shape.num_heads * d, e),
                (block + "attention/kv_linear/weight", 2 * shape.num_groups * d, e),
                (block + "attention/out_linear/weight", e, shape.num_heads * d),
                (block + "mlp/w1/weight", inner, e),
                (block + "mlp/w2/weight", e, inner),
                (block + "mlp/w3/weight", inner, e),
            ]
        return tensors

    def tt_expected_rows(self, shape):
        return {"llama_block_0/attention/q_linear/weight": shape.num_heads * shape.head_dim,
                "llama_block_0/attention/kv_linear/weight": 2 * shape.num_groups * shape.head_dim,
                "llama_block_0/mlp/w1/weight": shape.intermediate_dim}

    def tt_forward(self, model, ids, progress=None):
        from ..models import tt_rope_forward

        return tt_rope_forward(model, ids, progress)

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        from ..models import hf_rope_forward

        return hf_rope_forward(model, ids, progress, adjacent_pairs)

    def own_arguments(self, parser, options):
        parser.add_argument("--meta_style", nargs="?", const=True, default=False, type=options.auto_only,
                            metavar="auto",
                            help="q/k rows are already interleaved (Meta style): skip the RoPE row permutation; "
                                 "`--meta_style auto` decides from the checkpoint's loss on a text with q/k read "
                                 "both ways")
        parser.add_argument("--text", metavar="FILE",
                            help="UTF-8 text for --meta_style auto (default: a built-in English sample)")

    def default_paths(self, args, given_in, given_out, output_format):
        init = given_in or (DEFAULT_INIT if os.path.exists(DEFAULT_INIT) and args.format != "flatbuffer" else None)
        return init, given_out or self.default_output_for(output_format(init))

    def default_output_for(self, output_format):
        """The output without -o, in the format it would have."""
        return DEFAULT_OUTPUT_DIR if output_format == "flatbuffer" else DEFAULT_OUTPUT

    def output_of(self, args, output_format):
        return args.output_path or self.default_output_for(output_format(args.input_path))

    def convert_options(self, args):
        return {"meta_style": args.meta_style, "text_path": args.text}


LLAMA = LlamaFamily()
