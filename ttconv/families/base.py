"""What every model family module provides: the Family interface the drivers and formats ask.

A family module (llama.py, qwen3.py, gpt2.py, qwen3_5.py) makes one Family object holding everything
particular to its models: names, config reading and writing, name tables for each tt-train
format, tt-train's tensors, refusals, forward passes and command-line options. The drivers and
the format modules receive that object and ask it; none of them knows a family by its name.
"""
import re

from ..errors import MappingError, TtconvError
from ..mapping import compile_hf_order


class Family:
    """One model family. Subclasses set the data attributes and implement the methods that raise
    NotImplementedError; the rest have the behaviour most families share."""

    # --- who it is
    name = None                # the command name, and tt-train's model_type in a checkpoint directory
    display = None             # the name users read ("GPT-2")
    aliases = ()               # other names a command accepts for it
    summary = None             # one line for `ttconv --help`
    description = None         # the conversion command's description
    default_hf_model = None    # --hf_model's default, as the upstream scripts have it
    default_output = None      # the conversion's output without -o (None: required)
    config_model_path = "data/tt_model.msgpack"  # `ttconv config`'s model_path default
    formats = ("msgpack", "flatbuffer")  # what a conversion can write, in tt-train's eras (none: no command)

    # --- Hugging Face's side
    model_types = ()           # config.json model_type values it reads
    architecture_prefixes = ()  # a config without model_type is this family's when an architecture starts so
    reads_other_model_types = False  # other (Llama-shaped) model_types convert as this family
    hf_root = "model."         # the module that holds the blocks (PEFT's module paths start there)
    hf_unrooted = ("lm_head",)  # modules outside hf_root
    hf_order = ((), (), ())    # module order: before the blocks, in each block, after them
    conv1d = False             # Hugging Face stores its linears [in, out] (GPT-2's Conv1D)
    header_epsilon = ("rms_norm_eps", 1e-5)  # config key and ttml's own value when a header has none
    header_zeros = ()          # tensors an export without the original writes as zeros (what tt-train computes with)

    # --- tt-train's side
    table = ()                 # (tt name under the prefix, checkpoint source(s), row rule), see mapping
    ignored = ()               # checkpoint names a conversion may leave unused
    unrepresentable = ()       # (checkpoint name pattern, feature, what to do instead)
    block_0 = None             # the first block's name under the prefix ("llama_block_0/")
    load_prefix = None         # where a msgpack file holds the model for training (None: no msgpack)
    save_prefix = None         # where tt-train's msgpack training saves hold it
    model_root = None          # the root module's name in a checkpoint directory
    ttml_root = None           # the model's class name in a ttml checkpoint
    ttml_table = ()            # (ttml name under the root, fused, canonical name = parts), see tt.ttml_names
    meta_style = False         # --meta_style: q/k rows may come already interleaved
    rope = False               # q/k rows are permuted for tt-train's adjacent-pair RoPE

    def __init__(self):
        self._order = compile_hf_order(self.hf_order)
        self._ttml_lines = None
        # the blocks' names under the prefix, with the layer as group 1
        self.layer_pattern = re.compile(re.escape(self.block_0).replace("0/", r"(\d+)/"))

    def __repr__(self):
        return f"<family {self.name}>"

    # ------------------------------------------------------------ config.json

    def model_shape(self, ckpt):
        """The hfconfig.ModelShape of a checkpoint's config.json; CheckpointError for another family or a
        feature tt-train cannot represent."""
        from . import check_model_type

        check_model_type(self, ckpt)
        return self.read_shape(ckpt, f"{ckpt.directory}/config.json")

    def read_shape(self, ckpt, where):
        """The ModelShape of a config already known to be this family's."""
        raise NotImplementedError

    def norm_epsilon(self, config):
        """The norm epsilon of a config, with transformers' default."""
        return float(config.get("rms_norm_eps", 1e-6))

    def hf_config(self, fields, tied, sizes, where):
        """config.json (a dict) for a model known only from a ttml header's model_config (fields, flat);
        tied: one embedding serves both ends; sizes: what the tensors say (header_sizes)."""
        raise NotImplementedError

    def hf_shapes(self, config):
        """{checkpoint tensor name: shape} that transformers expects for a config."""
        raise NotImplementedError

    def header_sizes(self, params, block):
        """What a ttml file's tensors tell that its header does not: {"intermediate", "head_dim"};
        block: the first block's name prefix."""
        return {"intermediate": params[block + "mlp/w1/weight"].rows, "head_dim": None}

    def transformer_config(self, shape, vocab_multiple):
        """The YAML's transformer_config: the keys tt-train's read_config for the family reads."""
        raise NotImplementedError

    def tokenizer_text(self, model_dir):
        """The tokenizer.json text tt-train reads, from a checkpoint folder."""
        raise NotImplementedError

    # ------------------------------------------------------------ names

    def canonical_names(self, tensors, where):
        """Checkpoint tensors under the names the table uses: {name: TensorInfo}."""
        named = {}
        for name, info in tensors.items():
            short = self.canonical_name(name)
            if short in named:
                raise MappingError(f"{where}: checkpoint has both {named[short].name} and {name}")
            named[short] = info
        return named

    def canonical_name(self, name):
        """A checkpoint tensor's name as the table writes it (names without "model." gain it, lm_head aside)."""
        return name if name.startswith(("model.", "lm_head.")) else "model." + name

    def hf_order_key(self, name):
        """Sort key that puts checkpoint tensor names in Hugging Face's module order."""
        return self._order(name)

    def peft_module(self, name):
        """PEFT's module path (under base_model.model.) of a checkpoint weight's name."""
        module = name[:-len(".weight")] if name.endswith(".weight") else name
        if module.startswith(self.hf_root) or module.startswith(self.hf_unrooted):
            return module
        return self.hf_root + module

    def plan_layout(self, shape):
        """What build_plan needs of the model's shape: layers, and for RoPE families the head counts."""
        layout = {"n_layers": shape.num_blocks}
        if self.rope:
            layout.update(rope_q=shape.num_heads, rope_kv=shape.num_groups, head_dim=shape.head_dim)
        return layout

    def ttml_fused_sizes(self, path, name, fused, size, tensors):
        """{part: rows (or columns of a one-row tensor)} of a fused ttml tensor whose parts the
        family sizes itself, or None for the reader's rule (q as wide as the output projection,
        halves otherwise); tensors: the file's records by name, for the sizes of its siblings."""
        return None

    def ttml_lines(self):
        """The ttml table, compiled (tt.ttml_names)."""
        if self._ttml_lines is None:
            from ..tt.ttml_names import compile_table

            self._ttml_lines = compile_table(self.ttml_table)
        return self._ttml_lines

    # ------------------------------------------------------------ tt-train's tensors

    def tt_tensors(self, shape, vocab_rows):
        """(name under the model prefix, rows, cols) of tt-train's model for a shape."""
        raise NotImplementedError

    def model_tensors(self, ckpt, vocab_multiple=32):
        """tt-train's tensors (tt_tensors) for a checkpoint's config."""
        shape = self.model_shape(ckpt)
        return self.tt_tensors(shape, shape.tt_vocab(vocab_multiple))

    def ttml_records(self, shape, vocab_rows, ep):
        """(ttml name under the root, 4-D shape, canonical names of its parts) of the ttml checkpoint a
        conversion writes (a family whose formats include "ttml"); ep: expert-parallel degree or None."""
        self._no_ttml()

    def ttml_model_config(self, ckpt, shape, ep, max_sequence_length=None):
        """The header's model_config of that checkpoint, as pickle_out Instances."""
        self._no_ttml()

    def _no_ttml(self):
        raise TtconvError(f"ttconv writes {self.display} as {' or '.join(self.formats) or 'nothing'}, not as ttml "
                          "checkpoints")

    def peft_caveat(self, adapted, modules):
        """A warning about how PEFT loads adapters of the adapted modules (PEFT's module paths; modules:
        all of the model's), or None."""
        return None

    def ttml_summary(self, tt):
        """A line inspect prints of a ttml checkpoint of this family's model (tt: its reader), or None."""
        return None

    def ttml_shape(self, ckpt, allow_lossy=False):
        """The ModelShape of the ttml checkpoint a conversion writes; allow_lossy: what tt-train computes
        otherwise is warned of instead of refused."""
        self._no_ttml()

    @property
    def dir_model_prefix(self):
        """Where a checkpoint directory holds the model: <model_type>/<root module>."""
        return f"{self.name}/{self.model_root}"

    def training_save_notice(self, tt, prefix):
        """A notice for a msgpack training save whose model lies where training does not load it, or None."""
        if self.save_prefix == self.load_prefix or prefix != self.save_prefix:
            return None
        return (f"{tt.path} is a training save: its model is under {prefix}, where tt-train saves it, but "
                f"tt-train's training mode loads {self.load_prefix}; add --prefix {self.load_prefix} "
                "to resume training from the output")

    def prefix_note(self, prefix):
        """What inspect says of a msgpack model prefix it recognises ('' when nothing)."""
        if self.save_prefix != self.load_prefix:
            if prefix == self.save_prefix:
                return f", where tt-train saves a {self.display}"
            if prefix == self.load_prefix:
                return f", where tt-train's training mode loads a {self.display}"
        return ""

    # ------------------------------------------------------------ check's forward passes

    def tt_expected_rows(self, shape):
        """{tt name under the prefix: rows} that a file of this shape must have (check refuses others)."""
        raise NotImplementedError

    def tt_context(self, model):
        """Positions a tt model (models.TtModel) can take."""
        return model.shape.max_sequence_length

    def tt_forward(self, model, ids, progress=None):
        """The normed last hidden states of a models.TtModel for token ids."""
        raise NotImplementedError

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        """The normed last hidden states of a models.HfModel for token ids, one per adjacent_pairs entry."""
        raise NotImplementedError

    def hf_head_name(self, tensors):
        """The checkpoint tensor that gives the output head's rows."""
        return "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"

    def qk_layouts(self):
        """The q/k readings check compares the checkpoint in: (False,), or (False, True) to also read its
        rows as Meta-interleaved (a family with --meta_style)."""
        return (False, True) if self.meta_style else (False,)

    # ------------------------------------------------------------ the command line

    input_metavar = "INPUT_PATH"
    input_help = "what to fill: a msgpack init file or a checkpoint directory"
    output_metavar = "OUTPUT_PATH"
    output_help = "output file or directory"
    tokenizer_help = ("also (or, without explicit input/output, only) write the tokenizer.json that tt-train "
                      "reads to this path")
    format_help = None         # --format's help when the family writes fewer formats than tt-train has
    output_required = None     # the error when a conversion is given no output and has no default

    def add_arguments(self, parser, options):
        """The conversion command's arguments; options (cli.CommandOptions) adds the shared groups."""
        parser.add_argument("-i", "--input_path", metavar=self.input_metavar, help=self.input_help)
        parser.add_argument("-o", "--output_path", metavar=self.output_metavar, help=self.output_help)
        options.hf(parser, self.default_hf_model, self.tokenizer_help)
        self.own_arguments(parser, options)
        options.files(parser, self.format_help)

    def own_arguments(self, parser, options):
        """Arguments only this family's conversion command has."""

    def given_paths(self, args):
        """(input, output) given on the command line (None where not)."""
        return args.input_path, args.output_path

    def default_paths(self, args, given_in, given_out, output_format):
        """(init file or None to build from config.json, output path) for what was given; output_format(init)
        is the format that output would have."""
        return given_in, given_out or self.default_output

    def output_of(self, args, output_format):
        """The path a conversion command writes, as far as the arguments tell (None when they do not)."""
        return self.given_paths(args)[1] or self.default_output

    def tokenizer_only(self, args, given_in, given_out):
        """True when -t alone asks for only the tokenizer (the upstream scripts' rule)."""
        return bool(args.dump_tokenizer_path) and not (given_out and (given_in or args.no_init))

    def convert_options(self, args):
        """The conversion's keywords that only this family's command has."""
        return {}
