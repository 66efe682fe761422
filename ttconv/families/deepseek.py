"""DeepSeek-V2/V3 (MLA + mixture of experts) on tt-train's Python side: what ttconv knows of it.

tt-train's ttml trains DeepSeek (ttml/models/deepseek/) under its root `DeepSeek`: `tok_emb`,
`blocks/{i}/` (attn: `wq` or `wq_a`/`q_norm`/`wq_b`, `wkv_a`, `kv_norm`, `wkv_b`, `wo`; norms
`attn_norm`, `ffn_norm`; ffn: a dense SwiGLU `w1`/`w3`/`w2` in the first n_dense_layers, else the
router `gate`, `experts/{e}/w1|w3|w2` and `shared_experts/w1|w3|w2`), `norm`, `head`; linears
[1, 1, out, in] in Hugging Face's row order (its RoPE pairs are already adjacent), the
vocabulary padded to a multiple of 32. Under expert parallelism over D devices each layer holds
`ffn/w_gate_{j}`, `w_up_{j}` (D, 1, I, H) and `w_down_{j}` (D, 1, H, I), slice r being expert
r * (E / D) + j. tt-train has no Hugging Face loader for it, so ttconv is both ways: `ttconv deepseek`
writes a ttml checkpoint (tt.ttml_out) with model_builders' header, `to-hf deepseek` the checkpoint
in transformers' per-expert layout (the router's load-balancing bias, which ttml's checkpoints never
hold, comes from --hf_model). What ttml cannot represent is refused naming the field. `check deepseek`
runs MLA and the mixture of experts on both sides (_layers).
"""
import functools
import logging

import numpy as np

from ..errors import CheckpointError, TtconvError
from ..hf.from_header import common_fields
from ..hf.hfconfig import ModelShape, refuse
from ..hf.tokenizer import llama_tokenizer_text
from ..mapping import count_tt_layers
from ..tt.pickle_out import Instance
from .base import Family

log = logging.getLogger("ttconv")
# transformers' q_a_layernorm and kv_a_layernorm keep DeepseekV2/V3RMSNorm's default eps, whatever
# rms_norm_eps says; ttml's q_norm and kv_norm use its 1e-5 like every other norm
HF_LATENT_EPSILON = 1e-6
EPSILON = 1e-5  # every RMSNorm of ttml's DeepSeek (transformer.py's RMSNormLayer)
L = "model.layers.{i}."
ROUTER_BIAS = r"model\.layers\.\d+\.mlp\.gate\.e_score_correction_bias"
EXPERT_LINEARS = (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj"))

# the block's tensors: the name within the block (ttml's and the canonical one) and the Hugging Face
# name within the layer
_BLOCK = (
    ("attn_norm/gamma",          "input_layernorm.weight"),
    ("ffn_norm/gamma",           "post_attention_layernorm.weight"),
    ("attn/wq/weight",           "self_attn.q_proj.weight"),
    ("attn/wq_a/weight",         "self_attn.q_a_proj.weight"),
    ("attn/q_norm/gamma",        "self_attn.q_a_layernorm.weight"),
    ("attn/wq_b/weight",         "self_attn.q_b_proj.weight"),
    ("attn/wkv_a/weight",        "self_attn.kv_a_proj_with_mqa.weight"),
    ("attn/kv_norm/gamma",       "self_attn.kv_a_layernorm.weight"),
    ("attn/wkv_b/weight",        "self_attn.kv_b_proj.weight"),
    ("attn/wo/weight",           "self_attn.o_proj.weight"),
    ("ffn/gate/weight",          "mlp.gate.weight"),
) + tuple((f"ffn/{tt}/weight", f"mlp.{hf}.weight") for tt, hf in EXPERT_LINEARS) \
  + tuple((f"ffn/experts/{{e}}/{tt}/weight", f"mlp.experts.{{e}}.{hf}.weight") for tt, hf in EXPERT_LINEARS) \
  + tuple((f"ffn/shared_experts/{tt}/weight", f"mlp.shared_experts.{hf}.weight") for tt, hf in EXPERT_LINEARS)

TABLE = (
    # tt name                     checkpoint source(s)                                rows
    ("tok_emb/weight",            "model.embed_tokens.weight",                        "pad"),
    ("fc/weight",                 "lm_head.weight | model.embed_tokens.weight",       "pad"),
    ("ln_fc/gamma",               "model.norm.weight",                                ""),
) + tuple((f"deepseek_block_{{i}}/{name}", L + source, "") for name, source in _BLOCK)

# expert parallelism: (ttml name, the expert linear each slice is)
_STACKED = (("w_gate", "w1"), ("w_up", "w3"), ("w_down", "w2"))

TTML_TABLE = (
    # ttml name (under DeepSeek/)      fused      canonical name
    ("tok_emb/weight",                 "",        "tok_emb/weight"),
    ("head/weight",                    "",        "fc/weight"),
    ("norm/gamma",                     "",        "ln_fc/gamma"),
) + tuple((f"blocks/{{i}}/{name}", "", f"deepseek_block_{{i}}/{name}") for name, _ in _BLOCK) \
  + tuple((f"blocks/{{i}}/ffn/{stacked}_{{j}}", "stacked", f"deepseek_block_{{i}}/ffn/experts/{{e}}/{tt}/weight")
          for stacked, tt in _STACKED)

HF_ORDER = (
    ("embed_tokens.weight",),
    tuple(source for _, source in _BLOCK if "{e}" not in source),
    ("norm.weight", "lm_head.weight"),
)


def _four_d(dims):
    """ttml's 4-D shape of a Hugging Face tensor: [1, 1, out, in] for a linear, [1, 1, 1, N] for a vector."""
    return (1, 1) + tuple(dims) if len(dims) == 2 else (1, 1, 1) + tuple(dims)


def _positive(config, key, where, default=None):
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CheckpointError(f"{where}: {key} is {value!r}, expected a positive integer")
    return value


class DeepSeekFamily(Family):
    name = "deepseek"
    display = "DeepSeek"
    formats = ("ttml",)  # tt-train's Python side only: its C++ side has no DeepSeek
    summary = "convert a Hugging Face DeepSeek-V2/V3 checkpoint into a ttml (tt-train Python-side) checkpoint"
    description = """\
Write a Hugging Face DeepseekV2ForCausalLM or DeepseekV3ForCausalLM checkpoint (folder or hub id,
sharded or not, bf16/f16/f32) as the checkpoint tt-train's Python side (ttml) saves and loads:
ttml.checkpointing's format 1, record 0 the header (step 0, no tokenizer, model_builders'
ModelConfig with model_type "deepseek" and its _DeepSeekSpec and MoEParams, every field from
config.json) and manifest, then one tensor per record under ttml's names (DeepSeek/blocks/{i}/attn/
wq_a/weight, ...), linears [1, 1, out, in], norms [1, 1, 1, N], the vocabulary padded to a multiple
of 32. Experts are one module each (moe_type "dense"), or with --ep D the expert-parallel stacks
of moe_type "sparse_ep". Streaming, one chunk of rows at a time; the file appears whole or not at
all. What ttml's DeepSeek computes otherwise (a nonzero e_score_correction_bias, YaRN, another
rms_norm_eps, norm_topk_prob false for sigmoid routing) is refused naming the field; --allow-lossy
writes the file anyway, warning of each."""
    config_model_path = None
    model_types = ("deepseek_v2", "deepseek_v3")
    architecture_prefixes = ("DeepseekV2", "DeepseekV3")
    hf_order = HF_ORDER
    header_epsilon = ("rms_norm_eps", EPSILON)
    table = TABLE
    ignored = (ROUTER_BIAS,)
    header_zeros = (ROUTER_BIAS,)  # ttml routes with a zero bias
    block_0 = "deepseek_block_0/"
    model_root = "deepseek"
    ttml_root = "DeepSeek"
    ttml_table = TTML_TABLE

    def read_shape(self, ckpt, where):
        """The config's sizes, refusing what ttml's DeepSeek computes otherwise (moe.py, transformer.py)."""
        losses = self._config_losses(ckpt.config)
        if losses:
            refuse(where, losses[0])
        return self._shape(ckpt, where)

    def ttml_shape(self, ckpt, allow_lossy=False):
        """The shape of the ttml checkpoint `ttconv deepseek` writes: what ttml computes otherwise (the
        config's, and a nonzero router bias) refused, or with allow_lossy warned of as what changes."""
        from . import check_model_type

        check_model_type(self, ckpt)
        where = f"{ckpt.directory}/config.json"
        losses = self._config_losses(ckpt.config) + self._tensor_losses(ckpt)
        if losses and not allow_lossy:
            refuse(where, f"{losses[0]}; --allow-lossy writes the file anyway, as ttml will compute it")
        for loss in losses:
            log.warning("--allow-lossy: ttml's DeepSeek computes otherwise: %s", loss)
        return self._shape(ckpt, where)

    @staticmethod
    def _config_losses(config):
        """What of config.json ttml's DeepSeek computes otherwise, one phrase each naming the field."""
        losses = []
        scaling = config.get("rope_scaling") or {}
        kind = (scaling.get("rope_type", scaling.get("type")) or (config.get("rope_parameters") or {}).get("rope_type")
                or "default")
        if kind != "default":
            losses.append(f"RoPE scaling {kind!r} (ttml's DeepSeek has none: the positions would be rotated unscaled)")
        if config.get("model_type") == "deepseek_v3" and config.get("rope_interleave", True) is False:
            losses.append("rope_interleave false (ttml rotates the rope values' adjacent pairs, as DeepSeek's own "
                          "weights hold them)")
        eps = float(config.get("rms_norm_eps", 1e-6))
        if abs(eps - EPSILON) > 1e-12:
            losses.append(f"rms_norm_eps {eps:g} (every RMSNorm of ttml's DeepSeek uses {EPSILON:g})")
        sigmoid = config.get("model_type") == "deepseek_v3" or config.get("scoring_func") == "sigmoid"
        if sigmoid and not config.get("norm_topk_prob", True):
            losses.append("norm_topk_prob false (ttml's sigmoid router always normalizes its top-k weights)")
        if not sigmoid and int(config.get("n_group") or 1) > 1 and config.get("topk_method") == "group_limited_greedy":
            losses.append("topk_method group_limited_greedy (ttml scores an expert group by the sum of its top 2, "
                          "not its best expert)")
        return losses

    @staticmethod
    def _tensor_losses(ckpt):
        """A nonzero router bias: ttml's is a buffer that starts at zero and its checkpoints never hold it."""
        for name, info in ckpt.tensors.items():
            if name.endswith(".mlp.gate.e_score_correction_bias"):
                values = ckpt.read_rows(info)
                nonzero = (values & 0x7FFF) != 0 if info.dtype == "BF16" else values != 0  # bf16 as its bits
                if np.any(nonzero):
                    return [f"a nonzero e_score_correction_bias ({name}: ttml's router bias is a buffer that "
                            "starts at zero and that its checkpoints never hold; it would be dropped)"]
        return []

    def _shape(self, ckpt, where):
        config = ckpt.config
        if config.get("moe_layer_freq", 1) != 1:
            refuse(where, f"moe_layer_freq {config['moe_layer_freq']} (ttml's DeepSeek has mixture-of-experts "
                          "in every layer after its dense ones)")
        params = config.get("rope_parameters") or {}
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
        eps = float(config.get("rms_norm_eps", 1e-6))
        sigmoid = config.get("model_type") == "deepseek_v3" or config.get("scoring_func") == "sigmoid"
        heads = _positive(config, "num_attention_heads", where)
        experts = int(config.get("n_routed_experts") or 0)
        nope, rope = _positive(config, "qk_nope_head_dim", where), _positive(config, "qk_rope_head_dim", where)
        return ModelShape(
            family=self.name, embedding_dim=_positive(config, "hidden_size", where),
            num_blocks=_positive(config, "num_hidden_layers", where), num_heads=heads, num_groups=heads,
            head_dim=nope + rope, intermediate_dim=_positive(config, "intermediate_size", where),
            vocab_size=_positive(config, "vocab_size", where),
            max_sequence_length=_positive(config, "max_position_embeddings", where, 2048),
            weight_tying=bool(config.get("tie_word_embeddings", False)), theta=theta, rms_norm_eps=eps,
            details={"experts": experts, "sigmoid": sigmoid, "config": config})

    def plan_layout(self, shape):
        return {"n_layers": shape.num_blocks, "n_experts": shape.details["experts"]}

    def norm_epsilon(self, config):
        return float(config.get("rms_norm_eps", 1e-6))

    def hf_config(self, fields, tied, sizes, where):
        """DeepSeek-V3's config for sigmoid routing, V2's for softmax, from the header's _DeepSeekSpec."""
        embedding, layers, heads, context, vocab = common_fields(fields, sizes, where)
        sigmoid = str(fields.get("score_func", "sigmoid")) == "sigmoid"
        q_rank = int(fields.get("q_lora_rank") or 0)
        version = "V3" if sigmoid else "V2"
        config = {
            "architectures": [f"Deepseek{version}ForCausalLM"], "model_type": f"deepseek_{version.lower()}",
            "vocab_size": vocab, "hidden_size": embedding, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": context,
            "intermediate_size": sizes["intermediate"] or int(fields.get("inter_dim") or 0) or None,
            "moe_intermediate_size": sizes["moe_intermediate"] or int(fields["moe_inter_dim"]),
            "first_k_dense_replace": int(fields.get("n_dense_layers", 0)),
            "n_routed_experts": int(fields["n_routed_experts"]), "n_shared_experts": int(fields["n_shared_experts"]),
            "num_experts_per_tok": int(fields["n_activated_experts"]),
            "n_group": int(fields.get("n_expert_groups") or 1), "topk_group": int(fields.get("n_limited_groups") or 1),
            "routed_scaling_factor": float(fields.get("route_scale", 1.0)),
            "q_lora_rank": q_rank or None, "kv_lora_rank": int(fields["kv_lora_rank"]),
            "qk_nope_head_dim": int(fields["qk_nope_head_dim"]), "qk_rope_head_dim": int(fields["qk_rope_head_dim"]),
            "v_head_dim": int(fields["v_head_dim"]), "rms_norm_eps": EPSILON, "hidden_act": "silu",
            "rope_theta": float(fields.get("theta") or 10000.0), "rope_scaling": None,
            "attention_bias": False, "tie_word_embeddings": tied,
        }
        if config["intermediate_size"] is None:
            raise CheckpointError(f"{where}: no dense layer and no inter_dim: give the intermediate size with --set "
                                  "intermediate_size=N")
        if sigmoid:
            config.update(norm_topk_prob=True, topk_method="noaux_tc", scoring_func="sigmoid", rope_interleave=True)
        else:
            if config["n_group"] > 1:
                refuse(where, "softmax routing over expert groups (ttml scores a group by the sum of its top 2; "
                              "DeepSeek-V2's group_limited_greedy by its best expert)")
            config.update(norm_topk_prob=False, topk_method="greedy", scoring_func="softmax")
        return config

    def hf_shapes(self, config):
        e, heads = config["hidden_size"], config["num_attention_heads"]
        qk = config["qk_nope_head_dim"] + config["qk_rope_head_dim"]
        kv_rank, q_rank = config["kv_lora_rank"], config.get("q_lora_rank")
        inner, moe = config["intermediate_size"], config["moe_intermediate_size"]
        shapes = {"model.embed_tokens.weight": (config["vocab_size"], e), "model.norm.weight": (e,)}
        if not config.get("tie_word_embeddings"):
            shapes["lm_head.weight"] = (config["vocab_size"], e)
        for i in range(config["num_hidden_layers"]):
            layer = L.format(i=i)
            shapes.update({layer + "input_layernorm.weight": (e,), layer + "post_attention_layernorm.weight": (e,),
                           layer + "self_attn.kv_a_proj_with_mqa.weight": (kv_rank + config["qk_rope_head_dim"], e),
                           layer + "self_attn.kv_a_layernorm.weight": (kv_rank,),
                           layer + "self_attn.kv_b_proj.weight":
                               (heads * (config["qk_nope_head_dim"] + config["v_head_dim"]), kv_rank),
                           layer + "self_attn.o_proj.weight": (e, heads * config["v_head_dim"])})
            if q_rank:
                shapes.update({layer + "self_attn.q_a_proj.weight": (q_rank, e),
                               layer + "self_attn.q_a_layernorm.weight": (q_rank,),
                               layer + "self_attn.q_b_proj.weight": (heads * qk, q_rank)})
            else:
                shapes[layer + "self_attn.q_proj.weight"] = (heads * qk, e)
            if i < config["first_k_dense_replace"]:
                mlps = [("mlp.", inner)]
            else:
                shapes[layer + "mlp.gate.weight"] = (config["n_routed_experts"], e)
                if config.get("model_type") == "deepseek_v3":  # its router always has the bias
                    shapes[layer + "mlp.gate.e_score_correction_bias"] = (config["n_routed_experts"],)
                mlps = [(f"mlp.experts.{x}.", moe) for x in range(config["n_routed_experts"])]
                if config["n_shared_experts"]:
                    mlps.append(("mlp.shared_experts.", moe * config["n_shared_experts"]))
            for module, width in mlps:
                shapes.update({layer + module + "gate_proj.weight": (width, e), layer + module + "up_proj.weight": (width, e),
                               layer + module + "down_proj.weight": (e, width)})
        return shapes

    def header_sizes(self, params, block):
        """The dense layers' and the experts' inner sizes, where the file has such layers."""
        prefix = block[:-len(self.block_0)]
        dense = [p for n, p in params.items() if n.startswith(prefix) and n.endswith("/ffn/w1/weight")]
        expert = [p for n, p in params.items() if n.startswith(prefix) and n.endswith("/w1/weight") and "/experts/" in n]
        return {"intermediate": dense[0].rows if dense else None,
                "moe_intermediate": expert[0].rows if expert else None, "head_dim": None}

    # ------------------------------------------------------------ the way in: a ttml checkpoint

    def ttml_records(self, shape, vocab_rows, ep):
        """(ttml name under the root, 4-D shape, canonical names of its parts) of ttml's DeepSeek, in its
        modules' order; ep: the experts as ep-way expert-parallel stacks (None: a module per expert)."""
        config = shape.details["config"]
        hf = self.hf_shapes(dict(config, tie_word_embeddings=False))
        experts = config["n_routed_experts"]
        if ep and experts % ep:
            raise TtconvError(f"--ep {ep}: the {experts} routed experts of each layer do not split {ep} ways")
        embedding = (1, 1, vocab_rows, shape.embedding_dim)
        records = [("tok_emb/weight", embedding, ["tok_emb/weight"])]
        for i in range(shape.num_blocks):
            layer, block = L.format(i=i), f"deepseek_block_{i}/"
            for name, source in _BLOCK:
                if "{e}" not in name:
                    if layer + source in hf:
                        records.append((f"blocks/{i}/{name}", _four_d(hf[layer + source]), [block + name]))
                elif name.endswith("/w1/weight") and layer + source.format(e=0) in hf:
                    records.extend(self._expert_records(i, hf, experts, ep))
        return records + [("norm/gamma", (1, 1, 1, shape.embedding_dim), ["ln_fc/gamma"]),
                          ("head/weight", embedding, ["fc/weight"])]

    def _expert_records(self, i, hf, experts, ep):
        layer, block = L.format(i=i), f"deepseek_block_{i}/ffn/experts/"
        if not ep:
            return [(f"blocks/{i}/ffn/experts/{x}/{tt}/weight", _four_d(hf[f"{layer}mlp.experts.{x}.{name}.weight"]),
                     [f"{block}{x}/{tt}/weight"]) for x in range(experts) for tt, name in EXPERT_LINEARS]
        local = experts // ep
        records = []
        for j in range(local):
            for stacked, tt in _STACKED:
                name = dict(EXPERT_LINEARS)[tt]
                rows, cols = hf[f"{layer}mlp.experts.0.{name}.weight"]
                records.append((f"blocks/{i}/ffn/{stacked}_{j}", (ep, 1, rows, cols),
                                [f"{block}{r * local + j}/{tt}/weight" for r in range(ep)]))
        return records

    def ttml_model_config(self, ckpt, shape, ep, max_sequence_length=None):
        """model_builders.ModelConfig as train.py pickles it, every field from config.json: a _DeepSeekSpec
        holding its MoEParams (moe_type "sparse_ep" with ep, else "dense"). runner_type and weight_tying
        are left to the class's defaults (Default, Disabled: ttml's DeepSeek ties nothing), whose enums
        live in a module whose name depends on how ttml was installed."""
        config = shape.details["config"]
        # greedy softmax routing ignores expert groups, which ttml would honour
        groups = int(config.get("n_group") or 1) if shape.details["sigmoid"] else 1
        moe = Instance("model_builders", "MoEParams", (
            ("moe_inter_dim", int(config["moe_intermediate_size"])), ("n_routed_experts", int(config["n_routed_experts"])),
            ("n_shared_experts", int(config.get("n_shared_experts") or 0)),
            ("n_activated_experts", int(config["num_experts_per_tok"])),
            ("n_expert_groups", groups), ("n_limited_groups", int(config.get("topk_group") or 1) if groups > 1 else 1),
            ("score_func", "sigmoid" if shape.details["sigmoid"] else "softmax"),
            ("route_scale", float(config.get("routed_scaling_factor", 1.0)))))
        spec = Instance("model_builders", "_DeepSeekSpec", (
            ("theta", float(shape.theta)), ("inter_dim", int(config["intermediate_size"])),
            ("n_dense_layers", int(config.get("first_k_dense_replace", 0))),
            ("q_lora_rank", int(config.get("q_lora_rank") or 0)), ("kv_lora_rank", int(config["kv_lora_rank"])),
            ("qk_nope_head_dim", int(config["qk_nope_head_dim"])), ("qk_rope_head_dim", int(config["qk_rope_head_dim"])),
            ("v_head_dim", int(config["v_head_dim"])), ("moe_type", "sparse_ep" if ep else "dense"),
            ("moe_hyperparam", moe), ("moe_axis_name", None)))
        return Instance("model_builders", "ModelConfig", (
            ("model_type", self.name), ("model_path", ""), ("vocab_size", shape.vocab_size),
            ("embedding_dim", shape.embedding_dim), ("num_blocks", shape.num_blocks), ("num_heads", shape.num_heads),
            ("dropout_prob", float(config.get("attention_dropout") or 0.0)),
            ("max_sequence_length", int(max_sequence_length or shape.max_sequence_length)), ("spec", spec)))

    def peft_caveat(self, adapted, modules):
        """PEFT 0.21 with transformers 5 (checked: PEFT 0.21.2, transformers 5.24) turns a layer's per-expert
        adapters into its fused experts' adapter only when every expert of the layer has gate, up and down
        adapters; it moves any other MLP target (a dense layer's, the shared experts', part of a layer's
        experts) onto the fused experts, losing it. PEFT 0.17 with transformers 4.57, whose DeepSeek models keep
        a module per linear, loads every one of them as trained (checked: logits within 2.4e-7 of the merged model)."""
        lost = []
        for module in adapted:
            head, sep, _ = module.partition(".mlp.experts.")
            if sep:
                layer = [m for m in modules if m.startswith(head + sep)]
                if not set(layer) <= set(adapted):
                    lost.append(module)
            elif module.rsplit(".", 1)[-1] in ("gate_proj", "up_proj", "down_proj"):
                lost.append(module)
        if not lost:
            return None
        more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
        return (f"PEFT (0.21, with transformers 5) does not load these DeepSeek adapters as trained ({lost[0]}{more}): "
                "it keeps expert adapters only when every expert of a layer has gate, up and down ones, and moves "
                "other MLP adapters onto the fused experts (PEFT 0.17 with transformers 4.57 loads them); --merge-lora "
                "writes the model as trained")

    def ttml_summary(self, tt):
        """The mixture of experts: layers, experts and their sizes, and the experts' layout."""
        params = tt.parameters()
        experts, inner, shared, layers = set(), set(), set(), set()
        for name, param in params.items():
            parts = name.split("/")
            if len(parts) > 4 and parts[2:4] == ["ffn", "experts"] and parts[-2] == "w1":
                experts.add(int(parts[4]))
                inner.add(param.rows)
                layers.add(parts[1])
            elif parts[2:4] == ["ffn", "shared_experts"] and parts[-2] == "w1":
                shared.add(param.rows)
        if not experts:
            return "mixture of experts: none (every layer dense)"
        stacks = {r.array.shape[0] for r in tt.records if r.group == "model" and "/ffn/w_gate_" in r.name}
        layout = (f"expert-parallel stacks over {', '.join(map(str, sorted(stacks)))} devices (ffn/w_gate_J, w_up_J, "
                  "w_down_J)" if stacks else "one module per expert (ffn/experts/E)")
        dense = count_tt_layers(params, tt.root, self) - len(layers)
        return (f"mixture of experts: {len(layers)} layers of {len(experts)} routed experts "
                f"(inner size {', '.join(map(str, sorted(inner)))}), shared experts' inner size "
                f"{', '.join(map(str, sorted(shared))) or 'none'}, {dense} dense layer{'s' if dense != 1 else ''}; "
                f"{layout}")

    def add_arguments(self, parser, options):
        parser.add_argument("--hf_model", required=True,
                            help="the DeepseekV2/V3ForCausalLM checkpoint: folder or Hugging Face hub id")
        parser.add_argument("-o", "--output_path", required=True, metavar="OUT.pkl",
                            help="the ttml checkpoint to write")
        options.ttml(parser)

    def given_paths(self, args):
        return None, args.output_path

    def tokenizer_text(self, model_dir):
        return llama_tokenizer_text(model_dir)

    def _not_read(self, what):
        raise TtconvError(f"ttconv does not {what} for {self.display} models yet")

    def tt_tensors(self, shape, vocab_rows):
        self._not_read("read tt-train's own adapter files or build tt-train files")

    def transformer_config(self, shape, vocab_multiple):
        self._not_read("write a tt-train YAML")

    # ------------------------------------------------------------ check: MLA and the mixture of experts

    def tt_expected_rows(self, shape):
        c = shape.details["config"]
        return {"deepseek_block_0/attn/wkv_a/weight": c["kv_lora_rank"] + c["qk_rope_head_dim"],
                "deepseek_block_0/attn/wkv_b/weight": shape.num_heads * (c["qk_nope_head_dim"] + c["v_head_dim"])}

    def tt_forward(self, model, ids, progress=None):
        """ttml's DeepSeek: its router's bias is zero (a buffer no checkpoint holds), sigmoid top-k weights
        always normalized, softmax never, groups as the file's header has them (ttconv writes none for
        softmax routing)."""
        m, block = _layers()
        sizes = _sizes(model.shape, tt=True)
        cos, sin = _angles(model.shape, len(ids))
        x = model.run_blocks(model.embedded(ids), lambda x, w: block(x, _tt_weights(w), cos, sin, sizes, model.eps),
                             progress=progress)
        return m.rms_norm(x, model.tensor("ln_fc/gamma")[0], model.eps)

    def hf_forward(self, model, ids, progress=None, adjacent_pairs=(False,)):
        """transformers' DeepseekV2/V3: V2's softmax router (greedy top-k, weights not normalized), V3's
        sigmoid one (e_score_correction_bias for the choice, groups by their top-2 sum, norm_topk_prob);
        RoPE on adjacent pairs (V2's complex rotation, V3's rope_interleave)."""
        m, block = _layers()
        sizes = _sizes(model.shape, tt=False)
        cos, sin = _angles(model.shape, len(ids))
        states = [m.jnp.asarray(model.picked_rows("model.embed_tokens.weight", ids))]
        states = model.run_layers(states, "model.layers.{}.", lambda states, t: [
            block(states[0], _hf_weights(t), cos, sin, sizes, model.eps)], progress)
        return [m.rms_norm(states[0], model.tensor("model.norm.weight"), model.eps)]


def _sizes(shape, tt):
    """The static sizes and routing of a forward pass (hashable, for jit): ttml's routing when tt."""
    c = shape.details["config"]
    sigmoid = shape.details["sigmoid"]
    groups = int(c.get("n_group") or 1) if sigmoid else 1  # softmax: greedy, no groups
    normalize = sigmoid if tt else bool(sigmoid and c.get("norm_topk_prob", True))
    return (shape.num_heads, c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"], c["kv_lora_rank"],
            int(c["num_experts_per_tok"]), groups, int(c.get("topk_group") or 1) if groups > 1 else 1, sigmoid,
            normalize, float(c.get("routed_scaling_factor", 1.0)), EPSILON if tt else HF_LATENT_EPSILON)


def _angles(shape, length):
    """cos, sin [T, rope / 2] of the rope part (adjacent pairs on both sides)."""
    rope = shape.details["config"]["qk_rope_head_dim"]
    inv = 1.0 / (shape.theta ** (np.arange(0, rope, 2, dtype=np.float64) / rope))
    angles = np.outer(np.arange(length, dtype=np.float64), inv)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# a block's tensors under one set of names for the shared layer: (ttml's name within the block, transformers')
_LAYER_NAMES = tuple((tt, hf[:-len(".weight")].replace(".", "/")) for tt, hf in _BLOCK if "{e}" not in tt)


def _tt_weights(w):
    """A ttml block's tensors by transformers' module names (norms as vectors), experts stacked."""
    names = dict(_LAYER_NAMES)
    out = {names[name]: (value[0] if name.endswith("/gamma") else value) for name, value in w.items() if name in names}
    return _stack_experts(out, {name: value for name, value in w.items() if "/experts/" in name},
                          lambda e, tt: f"ffn/experts/{e}/{tt}/weight")


def _hf_weights(t):
    """A transformers layer's tensors by module name, experts stacked, the router bias kept."""
    names = {hf: module for _, module in _LAYER_NAMES for hf in [module.replace("/", ".") + ".weight"]}
    out = {names[name]: value for name, value in t.items() if name in names}
    bias = t.get("mlp.gate.e_score_correction_bias")
    if bias is not None:
        out["mlp/gate/bias"] = bias
    experts = {name: value for name, value in t.items() if name.startswith("mlp.experts.")}
    hf_names = dict(EXPERT_LINEARS)
    return _stack_experts(out, experts, lambda e, tt: f"mlp.experts.{e}.{hf_names[tt]}.weight")


def _stack_experts(out, experts, name_of):
    """out with the routed experts' linears stacked [E, rows, cols] under mlp/experts/w1|w3|w2."""
    jnp = _layers()[0].jnp
    count = 0
    while name_of(count, "w1") in experts:
        count += 1
    if count:
        for tt, _ in EXPERT_LINEARS:
            out[f"mlp/experts/{tt}"] = jnp.stack([experts[name_of(e, tt)] for e in range(count)])
    return out


@functools.lru_cache(maxsize=None)
def _layers():
    """The jit-compiled DeepSeek layer both sides run (built on first use: jax loads only for check), on
    one set of names (transformers' modules, "/"-separated). What differs is the weights and the routing
    given: `sizes` (_sizes) and, on transformers' side, the router bias."""
    from .. import models as m

    jax, jnp = m.jax, m.jnp

    def mla(a, w, cos, sin, sizes, eps):
        """Multi-head latent attention: q (direct or through its low rank), the shared k_pe, RoPE on the
        trailing rope values of each head, kv up-projected from the normed latent (the latents' norms
        with their own eps, sizes[-1])."""
        heads, nope, rope, _, kv_rank = sizes[:5]
        latent_eps = sizes[-1]
        length = a.shape[0]
        if "self_attn/q_proj" in w:
            q = a @ w["self_attn/q_proj"].T
        else:
            q = (m.rms_norm(a @ w["self_attn/q_a_proj"].T, w["self_attn/q_a_layernorm"], latent_eps)
                 @ w["self_attn/q_b_proj"].T)
        q = m.split_heads(q, heads)
        kv = a @ w["self_attn/kv_a_proj_with_mqa"].T
        latent, k_pe = kv[:, :kv_rank], kv[:, kv_rank:]
        up = m.split_heads(m.rms_norm(latent, w["self_attn/kv_a_layernorm"], latent_eps) @ w["self_attn/kv_b_proj"].T,
                           heads)
        k_pe = jnp.broadcast_to(m.rope_adjacent(k_pe[None], cos, sin), (heads, length, rope))
        query = jnp.concatenate([q[..., :nope], m.rope_adjacent(q[..., nope:], cos, sin)], axis=-1)
        key = jnp.concatenate([up[..., :nope], k_pe], axis=-1)
        return m.merge_heads(m.causal_attention(query, key, up[..., nope:])) @ w["self_attn/o_proj"].T

    def swiglu(x, gate, up, down):
        return (jax.nn.silu(x @ gate.T) * (x @ up.T)) @ down.T

    def moe(x, w, sizes):
        """Routed experts (every expert computed, weighted by the router's top-k) plus the shared ones."""
        top_k, groups, limited, sigmoid, normalize, scale = sizes[5:11]
        tokens = jnp.arange(x.shape[0])[:, None]
        logits = x @ w["mlp/gate"].T
        scores = jax.nn.sigmoid(logits) if sigmoid else jax.nn.softmax(logits, axis=-1)
        choice = scores + w["mlp/gate/bias"] if "mlp/gate/bias" in w else scores
        experts = scores.shape[-1]
        if groups > 1:  # keep the `limited` groups whose two best experts score most
            group_scores = jax.lax.top_k(choice.reshape(-1, groups, experts // groups), 2)[0].sum(-1)
            kept = jnp.zeros(group_scores.shape, bool).at[tokens, jax.lax.top_k(group_scores, limited)[1]].set(True)
            choice = jnp.where(jnp.repeat(kept, experts // groups, axis=-1), choice, -jnp.inf)
        picked = jax.lax.top_k(choice, top_k)[1]
        weights = jnp.take_along_axis(scores, picked, axis=-1)
        if normalize:
            weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
        routing = jnp.zeros_like(scores).at[tokens, picked].add(weights * scale)  # [T, E]
        hidden = jax.nn.silu(jnp.einsum("th,eih->eti", x, w["mlp/experts/w1"])) * jnp.einsum(
            "th,eih->eti", x, w["mlp/experts/w3"])
        out = jnp.einsum("eti,ehi,te->th", hidden, w["mlp/experts/w2"], routing)
        if "mlp/shared_experts/gate_proj" in w:
            out = out + swiglu(x, w["mlp/shared_experts/gate_proj"], w["mlp/shared_experts/up_proj"],
                               w["mlp/shared_experts/down_proj"])
        return out

    @m.jit("sizes", "eps")
    def block(x, w, cos, sin, sizes, eps):
        x = x + mla(m.rms_norm(x, w["input_layernorm"], eps), w, cos, sin, sizes, eps)
        post = m.rms_norm(x, w["post_attention_layernorm"], eps)
        if "mlp/gate" in w:
            return x + moe(post, w, sizes)
        return x + swiglu(post, w["mlp/gate_proj"], w["mlp/up_proj"], w["mlp/down_proj"])

    return m, block


DEEPSEEK = DeepSeekFamily()
