"""Files written the way tt-train's Python side (ttml) writes them, for the tests.

`write_stream` imitates `ttml.checkpointing.save_checkpoint` (format 1): one pickle with format,
header and manifest, then one pickle per array in the manifest's depth-first order. `write_sft`
imitates the SFT trainer's `{"step", "model_state"}` pickle. The tensors come from a Hugging Face
checkpoint through numpy written here, apart from ttconv: q/k rows interleaved per head for RoPE,
fused rows stacked, vocabulary padded to a multiple of 32, rank-interleaved under tensor
parallelism, 4-D as ttml holds them. The header's classes live in modules made for the moment
of writing (model_builders, _ttml.models, ttml.common.data, ...), which do not exist when the
file is read.
"""
import enum
import pickle
import sys
import types
from dataclasses import dataclass

import ml_dtypes
import numpy as np

import support

BF16 = np.dtype(ml_dtypes.bfloat16)


RAW_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}


def hf_tensors(model_dir):
    """A checkpoint's tensors as float32 (read from the raw layout: safetensors' oldest numpy reader
    has no bfloat16)."""
    from test_export_hf import raw_safetensors

    return {name: np.frombuffer(data, dtype=RAW_DTYPES[dtype]).astype(np.float32).reshape(shape)
            for name, (dtype, shape, data) in raw_safetensors(f"{model_dir}/model.safetensors").items()}


def pad_vocab(w):
    rows = -(-w.shape[0] // 32) * 32
    return support.pad_rows(w, rows)


def tp_interleave(parts, tp):
    """Rows of a fused tensor gathered from tp ranks: each rank's slice of every part, rank by rank."""
    return np.concatenate([np.concatenate([np.split(p, tp)[rank] for p in parts]) for rank in range(tp)])


def four_d(w):
    w = np.asarray(w, dtype=np.float32)
    return w.reshape((1, 1) + (w.shape if w.ndim == 2 else (1, w.shape[0])))


def llama_model(cfg, t, fused=False, tp=1, order="module", tied_name=None):
    """{ttml name: 4-D float32} of a Llama (Llama/...), unfused or fused (qkv_linear, w_gate_up)."""
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = {}
    embedding = pad_vocab(t["model.embed_tokens.weight"])
    head = pad_vocab(t.get("lm_head.weight", t["model.embed_tokens.weight"]))
    blocks = {}
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"Llama/blocks/{i}/"
        q = support.interleave_heads(t[p + "self_attn.q_proj.weight"], h)
        k = support.interleave_heads(t[p + "self_attn.k_proj.weight"], kv)
        v = t[p + "self_attn.v_proj.weight"]
        gate, up = t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]
        block = {b + "attention_norm/gamma": t[p + "input_layernorm.weight"]}
        if fused:
            block[b + "attention/qkv_linear/weight"] = tp_interleave([q, k, v], tp)
        else:
            block[b + "attention/q_linear/weight"] = q
            block[b + "attention/kv_linear/weight"] = tp_interleave([k, v], tp)
        block[b + "attention/out_linear/weight"] = t[p + "self_attn.o_proj.weight"]
        block[b + "mlp_norm/gamma"] = t[p + "post_attention_layernorm.weight"]
        if fused:
            block[b + "mlp/w_gate_up/weight"] = tp_interleave([gate, up], tp)
        else:
            block[b + "mlp/w1/weight"] = gate
            block[b + "mlp/w3/weight"] = up
        block[b + "mlp/w2/weight"] = t[p + "mlp.down_proj.weight"]
        blocks.update(block)
    out["Llama/tok_emb/weight"] = embedding
    out.update(blocks)
    out["Llama/ln_fc/gamma"] = t["model.norm.weight"]
    out["Llama/fc/weight"] = head
    return _finish(out, order, tied_name)


def qwen3_model(cfg, t, scheme="unfused", tp=1, order="module", tied_name=None):
    """{ttml name: 4-D float32} of a Qwen3: scheme "unfused" (q/k/v_proj), "kv" (fused kv_proj) or
    "hf" (the older names mirroring Hugging Face's: Qwen3/model/layers/...)."""
    h, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    root = "Qwen3/model/layers" if scheme == "hf" else "Qwen3/blocks"
    out = {("Qwen3/model/embed_tokens/weight" if scheme == "hf" else "Qwen3/tok_emb/weight"):
           pad_vocab(t["model.embed_tokens.weight"])}
    for i in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"{root}/{i}/"
        k = support.interleave_heads(t[p + "self_attn.k_proj.weight"], kv)
        out[b + "input_layernorm/weight"] = t[p + "input_layernorm.weight"]
        out[b + "self_attn/q_proj/weight"] = support.interleave_heads(t[p + "self_attn.q_proj.weight"], h)
        if scheme == "kv":
            out[b + "self_attn/kv_proj/weight"] = tp_interleave([k, t[p + "self_attn.v_proj.weight"]], tp)
        else:
            out[b + "self_attn/k_proj/weight"] = k
            out[b + "self_attn/v_proj/weight"] = t[p + "self_attn.v_proj.weight"]
        out[b + "self_attn/o_proj/weight"] = t[p + "self_attn.o_proj.weight"]
        out[b + "self_attn/q_norm/weight"] = support.interleave_vector(t[p + "self_attn.q_norm.weight"])
        out[b + "self_attn/k_norm/weight"] = support.interleave_vector(t[p + "self_attn.k_norm.weight"])
        out[b + "post_attention_layernorm/weight"] = t[p + "post_attention_layernorm.weight"]
        for hf, tt in (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("down_proj", "down_proj")):
            out[b + f"mlp/{tt}/weight"] = t[p + f"mlp.{hf}.weight"]
    out["Qwen3/model/norm/weight" if scheme == "hf" else "Qwen3/ln_fc/weight"] = t["model.norm.weight"]
    if "lm_head.weight" in t:
        out["Qwen3/lm_head/weight" if scheme == "hf" else "Qwen3/fc/weight"] = pad_vocab(t["lm_head.weight"])
    return _finish(out, order, tied_name)


def nanogpt_model(cfg, t, order="module", tied_name="tok_emb"):
    """{ttml name: 4-D float32} of a NanoGPT (GPT-2): Conv1D weights transposed, tied embedding."""
    t = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in t.items()}
    out = {"NanoGPT/tok_emb/weight": pad_vocab(t["wte.weight"]), "NanoGPT/pos_emb/weight": t["wpe.weight"]}
    names = {"ln1/gamma": "ln_1.weight", "ln1/beta": "ln_1.bias", "attention/qkv_linear/weight": "attn.c_attn.weight",
             "attention/qkv_linear/bias": "attn.c_attn.bias", "attention/out_linear/weight": "attn.c_proj.weight",
             "attention/out_linear/bias": "attn.c_proj.bias", "ln2/gamma": "ln_2.weight", "ln2/beta": "ln_2.bias",
             "mlp/fc1/weight": "mlp.c_fc.weight", "mlp/fc1/bias": "mlp.c_fc.bias", "mlp/fc2/weight": "mlp.c_proj.weight",
             "mlp/fc2/bias": "mlp.c_proj.bias"}
    for i in range(cfg["n_layer"]):
        for tt, hf in names.items():
            w = t[f"h.{i}.{hf}"]
            out[f"NanoGPT/blocks/{i}/{tt}"] = w.T.copy() if w.ndim == 2 else w
    out["NanoGPT/ln_f_gamma"] = t["ln_f.weight"]
    out["NanoGPT/ln_f_beta"] = t["ln_f.bias"]
    out["NanoGPT/fc/weight"] = pad_vocab(t.get("lm_head.weight", t["wte.weight"]))
    return _finish(out, order, tied_name)


def _finish(out, order, tied_name):
    """4-D arrays in the walk order asked for; a tied embedding kept under one name only."""
    root = next(iter(out)).split("/", 1)[0]
    if tied_name is not None:  # one parameter, under the name the model walks first
        keep, drop = f"{root}/{tied_name}/weight", f"{root}/{'fc' if tied_name == 'tok_emb' else 'tok_emb'}/weight"
        kept, dropped = out.pop(keep, None), out.pop(drop, None)
        out[keep] = kept if kept is not None else dropped
    items = list(out.items())
    if order == "reversed":  # the C++ maps behind NamedParameters are unordered: never sorted
        items = items[::-1]
    return {name: four_d(w) for name, w in items}


# ---------------------------------------------------------------- header classes, made to vanish


class _Modules:
    """Modules registered for the moment of pickling (so pickle finds the classes), removed after."""

    def __init__(self, names):
        self.names = names
        self.modules = {name: types.ModuleType(name) for name in names}

    def __enter__(self):
        for name, module in self.modules.items():
            sys.modules[name] = module
        return self.modules

    def __exit__(self, *exc):
        for name in self.names:
            sys.modules.pop(name, None)


HEADER_MODULES = ("model_builders", "_ttml", "_ttml.models", "ttml", "ttml.common", "ttml.common.data")


def _header_classes(modules):
    def place(cls, module):
        cls.__module__ = module
        cls.__qualname__ = cls.__name__
        setattr(modules[module], cls.__name__, cls)
        return cls

    class RunnerType(enum.Enum):
        MemoryEfficient = 0
        Default = 1

    class WeightTyingType(enum.Enum):
        Disabled = 0
        Enabled = 1

    @dataclass
    class LlamaSpec:
        num_groups: int = 3
        theta: float = 500000.0
        intermediate_dim: int = None
        scaling_factor: float = 0.0
        high_freq_factor: float = 4.0
        low_freq_factor: float = 1.0
        original_context_length: int = 0

    @dataclass
    class Qwen3Spec:
        num_groups: int = 3
        theta: float = 1000000.0
        intermediate_dim: int = None
        head_dim: int = None
        attention_bias: bool = False
        scaling_factor: float = 0.0
        high_freq_factor: float = 4.0
        low_freq_factor: float = 1.0
        original_context_length: int = 0

    @dataclass
    class GPT2Spec:
        bias: bool = True
        positional_embedding_type: str = "trainable"
        use_composite_layernorm: bool = False

    @dataclass
    class _DeepSeekSpec:
        theta: float = 10000.0
        inter_dim: int = None
        moe_inter_dim: int = 256
        n_dense_layers: int = 2
        n_routed_experts: int = 8
        n_shared_experts: int = 1
        n_activated_experts: int = 2
        n_expert_groups: int = 2
        n_limited_groups: int = 1
        score_func: str = "sigmoid"
        route_scale: float = 2.5
        q_lora_rank: int = 256
        kv_lora_rank: int = 128
        qk_nope_head_dim: int = 64
        qk_rope_head_dim: int = 32
        v_head_dim: int = 64

    @dataclass
    class MoEParams:
        moe_inter_dim: int = 256
        n_routed_experts: int = 8
        n_shared_experts: int = 1
        n_activated_experts: int = 2
        n_expert_groups: int = 2
        n_limited_groups: int = 1
        score_func: str = "sigmoid"
        route_scale: float = 2.5

    @dataclass
    class DeepSeekSpec:  # newer model_builders.py: the MoE fields in a MoEParams of their own
        theta: float = 10000.0
        inter_dim: int = None
        n_dense_layers: int = 2
        q_lora_rank: int = 256
        kv_lora_rank: int = 128
        qk_nope_head_dim: int = 64
        qk_rope_head_dim: int = 32
        v_head_dim: int = 64
        moe_type: str = "sparse_ep"
        moe_hyperparam: MoEParams = None
        moe_axis_name: str = None

    @dataclass
    class ModelConfig:
        model_type: str = "gpt2"
        model_path: str = ""
        vocab_size: int = 0
        embedding_dim: int = 384
        num_blocks: int = 6
        num_heads: int = 6
        dropout_prob: float = 0.2
        max_sequence_length: int = 256
        runner_type: object = None
        weight_tying: object = None
        spec: object = None

    class CharTokenizer:
        def __init__(self, text):
            self.stoi, self.itos = {"<PAD>": 0}, ["<PAD>"]
            for ch in sorted(set(text)):
                self.stoi[ch] = len(self.itos)
                self.itos.append(ch)
            for token in ("<BEG>", "<END>"):
                self.stoi[token] = len(self.itos)
                self.itos.append(token)

    for cls in (RunnerType, WeightTyingType):
        place(cls, "_ttml.models")
    for cls in (LlamaSpec, Qwen3Spec, GPT2Spec, _DeepSeekSpec, MoEParams, DeepSeekSpec, ModelConfig):
        place(cls, "model_builders")
    place(CharTokenizer, "ttml.common.data")
    return types.SimpleNamespace(RunnerType=RunnerType, WeightTyingType=WeightTyingType, LlamaSpec=LlamaSpec,
                                 Qwen3Spec=Qwen3Spec, GPT2Spec=GPT2Spec, DeepSeekSpec=_DeepSeekSpec,
                                 MoEParams=MoEParams, NestedDeepSeekSpec=DeepSeekSpec, ModelConfig=ModelConfig,
                                 CharTokenizer=CharTokenizer)


def model_config(classes, family, cfg, tied):
    """The training script's ModelConfig for a Hugging Face config."""
    tying = classes.WeightTyingType.Enabled if tied else classes.WeightTyingType.Disabled
    if family == "gpt2":
        return classes.ModelConfig("gpt2", "", cfg["vocab_size"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"], 0.0,
                                   cfg["n_positions"], classes.RunnerType.Default, tying, classes.GPT2Spec())
    if family == "llama":
        spec = classes.LlamaSpec(cfg["num_key_value_heads"], cfg["rope_theta"], cfg["intermediate_size"])
    else:
        spec = classes.Qwen3Spec(cfg["num_key_value_heads"], cfg["rope_theta"], cfg["intermediate_size"],
                                 cfg.get("head_dim"), cfg.get("attention_bias", False))
    return classes.ModelConfig(family, "", cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"],
                               cfg["num_attention_heads"], 0.0, cfg["max_position_embeddings"],
                               classes.RunnerType.Default, tying, spec)


# ---------------------------------------------------------------- the writers


class Numpy1Pickler(pickle._Pickler):
    """Pickles numpy's reconstructors under numpy 1.x's module paths (numpy.core...), as a numpy 1.x
    writer names them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _renamed_global(self, obj, name=None):
        module = getattr(obj, "__module__", "") or ""
        if not module.startswith("numpy._core"):
            return pickle._Pickler.save_global(self, obj, name)
        module = "numpy.core" + module[len("numpy._core"):]
        name = name or obj.__qualname__
        if self.proto >= 4:
            self.save(module)
            self.save(name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)

    dispatch[types.BuiltinFunctionType] = _renamed_global
    dispatch[types.FunctionType] = _renamed_global


def _dump(value, handle, protocol, numpy1):
    if numpy1:
        Numpy1Pickler(handle, protocol).dump(value)
    else:
        pickle.dump(value, handle, protocol=protocol)


def _meta(array):
    return {"layout": "TILE", "dtype": "BFLOAT16" if getattr(array, "dtype", None) == BF16 else "FLOAT32"}


def write_stream(path, model, optimizer=None, header=None, protocol=4, numpy1=False, header_of=None):
    """A ttml.checkpointing format-1 file: model {name: array}; optimizer a state dict whose
    {name: array} dicts are NamedParameters leaves (nested dicts for composite optimizers);
    header_of(classes) builds the header with the vanishing classes (or header as given)."""
    def skeleton(node):
        if isinstance(node, Leaves):
            return {"named_parameters": {name: _meta(a) for name, a in node.items()}}
        if isinstance(node, dict):
            return {key: skeleton(sub) for key, sub in node.items()}
        return node

    def arrays(node):
        if isinstance(node, Leaves):
            yield from node.values()
        elif isinstance(node, dict):
            for sub in node.values():
                yield from arrays(sub)

    manifest = {"model": skeleton(Leaves(model))}
    if optimizer is not None:
        manifest["optimizer"] = skeleton(optimizer)
    with _Modules(HEADER_MODULES) as modules, open(path, "wb") as handle:
        if header_of is not None:
            header = header_of(_header_classes(modules))
        _dump({"format": 1, "header": header or {}, "manifest": manifest}, handle, protocol, numpy1)
        for array in list(arrays(Leaves(model))) + list(arrays(optimizer or {})):
            _dump(array, handle, protocol, numpy1)
    return path


def load_stream(path):
    """(record 0, [arrays]) of a format-1 file, read as ttml.checkpointing reads it: pickle.load again and
    again, with stand-ins of the header's classes importable (their instances keep the pickled fields)."""
    records = []
    with _Modules(HEADER_MODULES) as modules, open(path, "rb") as handle:
        _header_classes(modules)
        first = pickle.load(handle)
        while handle.peek(1):
            records.append(pickle.load(handle))
    return first, records


def write_sft(path, model, step=7, protocol=4, numpy1=False):
    """The SFT trainer's checkpoint: one pickle {"step", "model_state": {name: float32 array}}."""
    with open(path, "wb") as handle:
        _dump({"step": step, "model_state": {k: np.asarray(v, dtype=np.float32) for k, v in model.items()}},
              handle, protocol, numpy1)
    return path


class Leaves(dict):
    """A NamedParameters leaf of a state: {parameter name: array}."""


def adamw_state(model, full_precision=False, amsgrad=False, seed=5):
    """An AdamW (or AdamWFullPrecision) state dict over model: moments bf16 (float32 with full
    precision), float32 master weights holding the trained values (the model copy bf16)."""
    rng = np.random.default_rng(seed)
    moment = np.float32 if full_precision else ml_dtypes.bfloat16
    state = {"steps": 12, "lr": 3e-4, "amsgrad": amsgrad}
    state["exp_avg"] = Leaves({n: rng.normal(size=a.shape).astype(moment) for n, a in model.items()})
    state["exp_avg_sq"] = Leaves({n: np.abs(rng.normal(size=a.shape)).astype(moment) for n, a in model.items()})
    if full_precision:
        state["master_weights"] = Leaves({n: np.asarray(a, dtype=np.float32) for n, a in model.items()})
    return state


def as_bf16(model):
    return {name: a.astype(ml_dtypes.bfloat16) for name, a in model.items()}
