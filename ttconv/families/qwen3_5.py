"""Qwen3.5 (Hugging Face `qwen3_5`; tt-train's Python side calls it Qwen3.8): what ttconv knows of it.

A hybrid of Gated DeltaNet (`linear_attn`) and gated attention (`self_attn`) layers. tt-train
loads the Hugging Face checkpoint itself (ttml/models/qwen38/loading.py), so ttconv's direction is
out: a ttml checkpoint of a fine-tune back to the original's layout. ttml's names mirror Hugging
Face's under its root `Qwen38Transformer` (`layers/{i}/...` for `model.language_model.layers.{i}...`)
with three differences its loader makes, which export undoes: the zero-centred RMSNorm weights
(input, post-attention, final, q_norm, k_norm; not the DeltaNet's gated norm) hold 1 + w; the
depthwise `conv1d.weight` [C, 1, K] is held as K taps `conv_tap_{j}` [1, 1, 1, C]; the embedding is
padded to a multiple of 32 (lm_head is not). The vision tower and the MTP head are not in ttml's
model: export copies them from the original. Checking the model (`check`) and files gathered from
tensor parallelism (whose in_proj_qkv rows tt-train permutes) are not read.
"""
from ..errors import CheckpointError, TtconvError
from ..hf.hfconfig import ModelShape
from ..hf.tokenizer import llama_tokenizer_text
from ..mapping import expand
from .base import Family

L = "model.language_model.layers.{i}."
MAX_TAPS = 8  # conv taps a table line is written for (Qwen3.5's kernel has 4)

# the block's tensors: ttml name within layers/{i}/ (the canonical name within the block too) and
# the Hugging Face name within the layer, with the transform tt-train applied
_BLOCK = (
    ("input_layernorm/weight",               "input_layernorm.weight:plus1"),
    ("post_attention_layernorm/weight",      "post_attention_layernorm.weight:plus1"),
    ("self_attn/q_proj/weight",              "self_attn.q_proj.weight"),
    ("self_attn/k_proj/weight",              "self_attn.k_proj.weight"),
    ("self_attn/v_proj/weight",              "self_attn.v_proj.weight"),
    ("self_attn/o_proj/weight",              "self_attn.o_proj.weight"),
    ("self_attn/q_norm/weight",              "self_attn.q_norm.weight:plus1"),
    ("self_attn/k_norm/weight",              "self_attn.k_norm.weight:plus1"),
    ("linear_attn/in_proj_qkv/weight",       "linear_attn.in_proj_qkv.weight"),
    ("linear_attn/in_proj_z/weight",         "linear_attn.in_proj_z.weight"),
    ("linear_attn/in_proj_b/weight",         "linear_attn.in_proj_b.weight"),
    ("linear_attn/in_proj_a/weight",         "linear_attn.in_proj_a.weight"),
    ("linear_attn/out_proj/weight",          "linear_attn.out_proj.weight"),
    ("linear_attn/A_log",                    "linear_attn.A_log"),
    ("linear_attn/dt_bias",                  "linear_attn.dt_bias"),
    ("linear_attn/norm_weight",              "linear_attn.norm.weight"),
    ("mlp/gate_proj/weight",                 "mlp.gate_proj.weight"),
    ("mlp/up_proj/weight",                   "mlp.up_proj.weight"),
    ("mlp/down_proj/weight",                 "mlp.down_proj.weight"),
) + tuple((f"linear_attn/conv_tap_{j}", f"linear_attn.conv1d.weight:tap{j}") for j in range(MAX_TAPS))

TABLE = (
    # tt name                     checkpoint source(s)                                                     rows
    ("tok_emb/weight",            "model.language_model.embed_tokens.weight",                              "pad"),
    ("fc/weight",                 "lm_head.weight | model.language_model.embed_tokens.weight",             "pad"),
    ("ln_fc/gamma",               "model.language_model.norm.weight:plus1",                                ""),
) + tuple((f"qwen35_block_{{i}}/{name}", L + source, "") for name, source in _BLOCK)

TTML_TABLE = (
    # ttml name (under Qwen38Transformer/)   fused   canonical name
    ("embed_tokens/weight",                  "",     "tok_emb/weight"),
    ("lm_head/weight",                       "",     "fc/weight"),
    ("norm/weight",                          "",     "ln_fc/gamma"),
) + tuple((f"layers/{{i}}/{name}", "", f"qwen35_block_{{i}}/{name}") for name, _ in _BLOCK)

HF_ORDER = (
    ("embed_tokens.weight",),
    tuple(source.split(":")[0] for _, source in _BLOCK),
    ("norm.weight", "lm_head.weight"),
)


class Qwen3_5Family(Family):
    name = "qwen3.5"
    aliases = ("qwen38",)
    display = "Qwen3.5"
    formats = ()  # tt-train loads Hugging Face's checkpoint itself: no conversion command
    config_model_path = None
    model_types = ("qwen3_5", "qwen3_5_text")
    architecture_prefixes = ("Qwen3_5",)
    hf_root = "model.language_model."
    hf_order = HF_ORDER
    header_epsilon = ("rms_norm_eps", 1e-6)
    table = TABLE
    # not in ttml's model: copied from the original
    ignored = (r"model\.visual\..+", r"mtp\..+", r"model\.language_model\.layers\.\d+\.self_attn\.rotary_emb\..+")
    block_0 = "qwen35_block_0/"
    model_root = "qwen35"
    ttml_root = "Qwen38Transformer"
    ttml_table = TTML_TABLE
    tensor_parallel_files = False

    def read_shape(self, ckpt, where):
        text = ckpt.config.get("text_config") or ckpt.config

        def number(key, default=None):
            value = text.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{where}: {key} is {value!r}, expected a positive integer")
            return value

        heads = number("num_attention_heads")
        return ModelShape(
            family=self.name, embedding_dim=number("hidden_size"), num_blocks=number("num_hidden_layers"),
            num_heads=heads, num_groups=number("num_key_value_heads", heads), head_dim=number("head_dim"),
            intermediate_dim=number("intermediate_size"), vocab_size=number("vocab_size"),
            max_sequence_length=number("max_position_embeddings", 2048),
            weight_tying=bool(ckpt.config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)))

    def canonical_name(self, name):
        """A text-only checkpoint's model.layers... read as the full model's model.language_model.layers..."""
        for short in ("model.layers.", "model.embed_tokens.", "model.norm."):
            if name.startswith(short):
                return "model.language_model." + name[len("model."):]
        return name

    def hf_order_key(self, name):
        return super().hf_order_key(name.replace("model.language_model.", "model.", 1))

    def model_tensors(self, ckpt, vocab_multiple=32):
        """The ttml model's tensors for a checkpoint: each table line's source shape, as tt-train holds it."""
        tensors = self.canonical_names(ckpt.tensors, ckpt.directory)
        out = []
        for name, (spec, rule) in expand(self.table, self.model_shape(ckpt).num_blocks).items():
            source, _, transform = spec.split(" | ")[0].partition(":")
            info = tensors.get(source)
            if info is None:
                continue
            rows, cols = info.matrix_shape()
            if transform.startswith("tap"):
                if int(transform[3:]) < cols:
                    out.append((name, 1, rows))
                continue
            out.append((name, -(-rows // vocab_multiple) * vocab_multiple if rule == "pad" else rows, cols))
        return out

    def tokenizer_text(self, model_dir):
        return llama_tokenizer_text(model_dir)

    def _not_read(self, what):
        raise TtconvError(f"ttconv does not {what} for {self.display} models")

    def hf_config(self, fields, tied, sizes, where):
        raise CheckpointError(f"{where}: a {self.display} checkpoint is exported beside its original: give --hf_model")

    def hf_shapes(self, config):
        self._not_read("build a checkpoint from a header")

    def tt_tensors(self, shape, vocab_rows):
        self._not_read("build tt-train files from a config")

    def transformer_config(self, shape, vocab_multiple):
        self._not_read("write a tt-train YAML (its recipes build the model from config.json)")

    def tt_expected_rows(self, shape):
        self._not_read("run check (the Gated DeltaNet forward pass)")

    def tt_forward(self, model, ids, progress=None):
        self._not_read("run check (the Gated DeltaNet forward pass)")

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        self._not_read("run check (the Gated DeltaNet forward pass)")


QWEN3_5 = Qwen3_5Family()
