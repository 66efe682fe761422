"""GPT-2 (gpt2 ... gpt2-xl, distilgpt2): everything ttconv knows of the family.

Hugging Face's GPT-2 stores its linears as Conv1D [in, out]: tt-train's are [out, in], so each is
transposed. tt-train's GPT-2 has trainable positions (cropped to its context), a 4E MLP, tanh
GELU and LayerNorms with biases; msgpack files and training saves hold it under
transformer/transformer, directories under gpt2/transformer, ttml checkpoints under NanoGPT/.
"""
import functools

from ..errors import CheckpointError, TtconvError
from ..hf.from_header import common_fields
from ..hf.hfconfig import ModelShape, refuse
from ..hf.tokenizer import gpt2_tokenizer_text
from .base import Family

TABLE = (
    # tt name                                        checkpoint source(s)             rows
    ("tok_emb/weight",                               "wte.weight",                    "pad"),
    ("fc/weight",                                    "lm_head.weight | wte.weight",   "pad"),
    ("pos_emb/weight",                               "wpe.weight",                    "crop"),
    ("ln_fc/gamma",                                  "ln_f.weight",                   ""),
    ("ln_fc/beta",                                   "ln_f.bias",                     ""),
    ("gpt_block_{i}/ln1/gamma",                      "h.{i}.ln_1.weight",             ""),
    ("gpt_block_{i}/ln1/beta",                       "h.{i}.ln_1.bias",               ""),
    ("gpt_block_{i}/attention/qkv_linear/weight",    "h.{i}.attn.c_attn.weight:T",    ""),
    ("gpt_block_{i}/attention/qkv_linear/bias",      "h.{i}.attn.c_attn.bias",        ""),
    ("gpt_block_{i}/attention/out_linear/weight",    "h.{i}.attn.c_proj.weight:T",    ""),
    ("gpt_block_{i}/attention/out_linear/bias",      "h.{i}.attn.c_proj.bias",        ""),
    ("gpt_block_{i}/ln2/gamma",                      "h.{i}.ln_2.weight",             ""),
    ("gpt_block_{i}/ln2/beta",                       "h.{i}.ln_2.bias",               ""),
    ("gpt_block_{i}/mlp/fc1/weight",                 "h.{i}.mlp.c_fc.weight:T",       ""),
    ("gpt_block_{i}/mlp/fc1/bias",                   "h.{i}.mlp.c_fc.bias",           ""),
    ("gpt_block_{i}/mlp/fc2/weight",                 "h.{i}.mlp.c_proj.weight:T",     ""),
    ("gpt_block_{i}/mlp/fc2/bias",                   "h.{i}.mlp.c_proj.bias",         ""),
)
IGNORED = (r"h\.\d+\.attn\.bias", r"h\.\d+\.attn\.masked_bias")

TTML_TABLE = (
    ("tok_emb/weight",                          "", "tok_emb/weight"),
    ("pos_emb/weight",                          "", "pos_emb/weight"),
    ("fc/weight",                               "", "fc/weight"),
    ("ln_f_gamma",                              "", "ln_fc/gamma"),
    ("ln_f_beta",                               "", "ln_fc/beta"),
    ("ln_f/gamma",                              "", "ln_fc/gamma"),
    ("ln_f/beta",                               "", "ln_fc/beta"),
    # the first Python NanoGPT's names (wte, wpe; lm_head_weight is wte's weight, tied)
    ("wte/weight",                              "", "tok_emb/weight"),
    ("wpe/weight",                              "", "pos_emb/weight"),
    ("lm_head_weight",                          "", "fc/weight"),
    ("blocks/{i}/ln1/gamma",                    "", "gpt_block_{i}/ln1/gamma"),
    ("blocks/{i}/ln1/beta",                     "", "gpt_block_{i}/ln1/beta"),
    ("blocks/{i}/ln2/gamma",                    "", "gpt_block_{i}/ln2/gamma"),
    ("blocks/{i}/ln2/beta",                     "", "gpt_block_{i}/ln2/beta"),
    ("blocks/{i}/attention/qkv_linear/weight",  "", "gpt_block_{i}/attention/qkv_linear/weight"),
    ("blocks/{i}/attention/qkv_linear/bias",    "", "gpt_block_{i}/attention/qkv_linear/bias"),
    ("blocks/{i}/attention/out_linear/weight",  "", "gpt_block_{i}/attention/out_linear/weight"),
    ("blocks/{i}/attention/out_linear/bias",    "", "gpt_block_{i}/attention/out_linear/bias"),
    ("blocks/{i}/mlp/fc1/weight",               "", "gpt_block_{i}/mlp/fc1/weight"),
    ("blocks/{i}/mlp/fc1/bias",                 "", "gpt_block_{i}/mlp/fc1/bias"),
    ("blocks/{i}/mlp/fc2/weight",               "", "gpt_block_{i}/mlp/fc2/weight"),
    ("blocks/{i}/mlp/fc2/bias",                 "", "gpt_block_{i}/mlp/fc2/bias"),
)

HF_ORDER = (
    ("wte.weight", "wpe.weight"),
    ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
     "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
     "mlp.c_proj.bias"),
    ("ln_f.weight", "ln_f.bias", "lm_head.weight"),
)

HELP = """\
Fill a tt-train GPT-2 init file or checkpoint directory with the weights of a
GPT-2-family checkpoint (gpt2, gpt2-medium/large/xl, distilgpt2), or build one from
config.json (-o alone; --format flatbuffer for a directory). Same usage as
gpt2_export.py: INPUT_FILE OUTPUT_FILE, or -i/-o."""


@functools.cache
def _layers():
    """The jit-compiled blocks of both sides (built on first use: jax loads only for check)."""
    from .. import models as m

    @m.jit("heads", "eps")
    def tt_block(x, w, heads, eps):
        a = m.layer_norm(x, w["ln1/gamma"][0], w["ln1/beta"][0], eps)
        qkv = a @ w["attention/qkv_linear/weight"].T + w["attention/qkv_linear/bias"][0]
        q, k, v = (m.split_heads(part, heads) for part in m.jnp.split(qkv, 3, axis=-1))
        x = x + m.merge_heads(m.causal_attention(q, k, v)) @ w["attention/out_linear/weight"].T \
            + w["attention/out_linear/bias"][0]
        h = m.layer_norm(x, w["ln2/gamma"][0], w["ln2/beta"][0], eps)
        hidden = m.gelu_tanh(h @ w["mlp/fc1/weight"].T + w["mlp/fc1/bias"][0])
        return x + hidden @ w["mlp/fc2/weight"].T + w["mlp/fc2/bias"][0]

    @m.jit("heads", "eps")
    def hf_layer(x, t, heads, eps):
        normed = m.layer_norm(x, t["ln_1.weight"], t["ln_1.bias"], eps)
        q, k, v = (m.split_heads(part, heads)
                   for part in m.jnp.split(normed @ t["attn.c_attn.weight"] + t["attn.c_attn.bias"], 3, axis=-1))
        x = x + m.merge_heads(m.causal_attention(q, k, v)) @ t["attn.c_proj.weight"] + t["attn.c_proj.bias"]
        normed = m.layer_norm(x, t["ln_2.weight"], t["ln_2.bias"], eps)
        return x + m.gelu_tanh(normed @ t["mlp.c_fc.weight"] + t["mlp.c_fc.bias"]) @ t["mlp.c_proj.weight"] \
            + t["mlp.c_proj.bias"]

    return m, tt_block, hf_layer


class GPT2Family(Family):
    name = "gpt2"
    display = "GPT-2"
    summary = "convert a GPT-2-family checkpoint"
    description = HELP
    default_hf_model = "gpt2"
    model_types = ("gpt2",)
    hf_root = "transformer."
    hf_unrooted = ()
    hf_order = HF_ORDER
    conv1d = True
    header_epsilon = ("layer_norm_epsilon", 1e-5)  # tt-train's LayerNorm
    table = TABLE
    ignored = IGNORED
    block_0 = "gpt_block_0/"
    load_prefix = save_prefix = "transformer/transformer"
    model_root = "transformer"
    ttml_root = "NanoGPT"
    ttml_table = TTML_TABLE
    output_required = ("gpt2 needs OUTPUT_FILE (or -o): with INPUT_FILE it fills that file, without it the file is "
                       "built from config.json; or -t alone for the tokenizer only")

    def read_shape(self, ckpt, where):
        config = ckpt.config
        embd = ckpt.config_int("n_embd")
        heads = ckpt.config_int("n_head")
        if embd % heads:
            raise CheckpointError(f"{where}: n_embd {embd} is not a multiple of n_head {heads}")
        inner = config.get("n_inner")
        if inner is not None and inner != 4 * embd:
            refuse(where, f"n_inner is {inner} (tt-train's GPT-2 MLP is 4 * n_embd = {4 * embd})")
        return ModelShape(
            family=self.name, embedding_dim=embd, num_blocks=ckpt.config_int("n_layer"), num_heads=heads,
            num_groups=heads, head_dim=embd // heads, intermediate_dim=4 * embd,
            vocab_size=ckpt.config_int("vocab_size"), max_sequence_length=ckpt.config_int("n_positions", 1024),
            weight_tying=bool(config.get("tie_word_embeddings", True)),
        )

    def norm_epsilon(self, config):
        return float(config.get("layer_norm_epsilon", 1e-5))

    def hf_config(self, fields, tied, sizes, where):
        embedding, layers, heads, context, vocab = common_fields(fields, sizes, where)
        key, epsilon = self.header_epsilon
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": self.name, "vocab_size": vocab,
                  "n_embd": embedding, "n_layer": layers, "n_head": heads, "n_positions": context, "n_ctx": context,
                  "n_inner": None, "activation_function": "gelu_new", key: epsilon, "tie_word_embeddings": tied}
        if sizes["intermediate"] != 4 * embedding:
            config["n_inner"] = sizes["intermediate"]
        return config

    def hf_shapes(self, config):
        e, v, p = config["n_embd"], config["vocab_size"], config["n_positions"]
        inner = config.get("n_inner") or 4 * e
        shapes = {"transformer.wte.weight": (v, e), "transformer.wpe.weight": (p, e)}
        for i in range(config["n_layer"]):
            h = f"transformer.h.{i}."
            shapes.update({h + "ln_1.weight": (e,), h + "ln_1.bias": (e,), h + "attn.c_attn.weight": (e, 3 * e),
                           h + "attn.c_attn.bias": (3 * e,), h + "attn.c_proj.weight": (e, e),
                           h + "attn.c_proj.bias": (e,), h + "ln_2.weight": (e,), h + "ln_2.bias": (e,),
                           h + "mlp.c_fc.weight": (e, inner), h + "mlp.c_fc.bias": (inner,),
                           h + "mlp.c_proj.weight": (inner, e), h + "mlp.c_proj.bias": (e,)})
        shapes.update({"transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,)})
        if not config.get("tie_word_embeddings", True):
            shapes["lm_head.weight"] = (v, e)
        return shapes

    def header_sizes(self, params, block):
        return {"intermediate": params[block + "mlp/fc1/weight"].rows, "head_dim": None}

    def transformer_config(self, shape, vocab_multiple):
        return {"num_heads": shape.num_heads, "embedding_dim": shape.embedding_dim, "dropout_prob": 0.0,
                "num_blocks": shape.num_blocks, "vocab_size": shape.tt_vocab(vocab_multiple),
                "max_sequence_length": shape.max_sequence_length,
                "weight_tying": "enabled" if shape.weight_tying else "disabled", "runner_type": "default",
                "positional_embedding_type": "trainable"}

    def tokenizer_text(self, model_dir):
        return gpt2_tokenizer_text(model_dir)

    def canonical_name(self, name):
        """GPT-2 names lose an optional 'transformer.' prefix (the original gpt2 repository has none)."""
        return name[len("transformer."):] if name.startswith("transformer.") else name

    def tt_tensors(self, shape, vocab_rows):
        """tt-train's GPT-2 with trainable positions."""
        e = shape.embedding_dim
        tensors = [] if shape.weight_tying else [("tok_emb/weight", vocab_rows, e)]
        tensors += [("fc/weight", vocab_rows, e), ("pos_emb/weight", shape.max_sequence_length, e),
                    ("ln_fc/gamma", 1, e), ("ln_fc/beta", 1, e)]
        for i in range(shape.num_blocks):
            block = f"gpt_block_{i}/"
            for name, rows, cols in (("ln1/gamma", 1, e), ("ln1/beta", 1, e),
                                     ("attention/qkv_linear/weight", 3 * e, e),
                                     ("attention/qkv_linear/bias", 1, 3 * e),
                                     ("attention/out_linear/weight", e, e), ("attention/out_linear/bias", 1, e),
                                     ("ln2/gamma", 1, e), ("ln2/beta", 1, e),
                                     ("mlp/fc1/weight", 4 * e, e), ("mlp/fc1/bias", 1, 4 * e),
                                     ("mlp/fc2/weight", e, 4 * e), ("mlp/fc2/bias", 1, e)):
                tensors.append((block + name, rows, cols))
        return tensors

    def tt_expected_rows(self, shape):
        return {"gpt_block_0/attention/qkv_linear/weight": 3 * shape.embedding_dim,
                "gpt_block_0/mlp/fc1/weight": shape.intermediate_dim}

    def tt_context(self, model):
        """pos_emb may be cropped below the checkpoint's positions."""
        return min(model.shape.max_sequence_length, model.rows("pos_emb/weight") or 0)

    def tt_forward(self, model, ids, progress=None):
        m, tt_block, _ = _layers()
        heads = model.shape.num_heads
        x = model.embedded(ids) + model.row_range("pos_emb/weight", 0, len(ids))
        x = model.run_blocks(x, lambda x, w: tt_block(x, w, heads, model.eps), progress=progress)
        return m.layer_norm(x, model.tensor("ln_fc/gamma")[0], model.tensor("ln_fc/beta")[0], model.eps)

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        m, _, hf_layer = _layers()
        heads = model.shape.num_heads
        states = [m.jnp.asarray(model.picked_rows("wte.weight", ids) + model.tensor("wpe.weight", 0, len(ids)))]
        states = model.run_layers(states, "h.{}.", lambda states, t: [hf_layer(states[0], t, heads, model.eps)],
                                  progress)
        return [m.layer_norm(states[0], model.tensor("ln_f.weight"), model.tensor("ln_f.bias"), model.eps)]

    def hf_head_name(self, tensors):
        return "lm_head.weight" if "lm_head.weight" in tensors else "wte.weight"

    def add_arguments(self, parser, options):
        """gpt2_export.py's usage: INPUT_FILE OUTPUT_FILE, or -i/-o."""
        parser.add_argument("input_pos", nargs="?", metavar="INPUT_FILE",
                            help="tt-train init file (or checkpoint directory) to fill")
        parser.add_argument("output_pos", nargs="?", metavar="OUTPUT_FILE", help="output file (or directory)")
        parser.add_argument("-i", "--input_file", help="same as INPUT_FILE")
        parser.add_argument("-o", "--output_file", help="same as OUTPUT_FILE")
        options.hf(parser, self.default_hf_model, self.tokenizer_help)
        options.files(parser)

    def given_paths(self, args):
        for flag, positional, name in ((args.input_file, args.input_pos, "INPUT_FILE and -i"),
                                       (args.output_file, args.output_pos, "OUTPUT_FILE and -o")):
            if flag and positional and flag != positional:
                raise TtconvError(f"{name} name different files; give one of them")
        if args.input_pos and not args.output_pos and not args.input_file:
            raise TtconvError(
                f"gpt2 was given one file ({args.input_pos}); give INPUT_FILE OUTPUT_FILE to fill a tt-train "
                "file, or -o OUTPUT_FILE alone to build it from config.json without an init file"
            )
        return args.input_file or args.input_pos, args.output_file or args.output_pos

    def output_of(self, args, output_format):
        return args.output_file or args.output_pos


GPT2 = GPT2Family()
