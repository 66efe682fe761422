"""Reading checkpoint directories: tensor files written by the real ttnn library, every header variant,
shards, metadata checked by flatc, and the directory through inspect, to-hf and check."""
import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

import support
import ttdir_support as ts
from test_export_hf import raw_safetensors
from ttconv.tt import tensorbin
from ttconv.tt.ttdir import read_metadata

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")
SHAPES = [(1, 1, 40, 70), (1, 1, 1, 33), (1, 1, 64, 32), (2, 3, 5, 7), (1, 1, 96, 100)]


def values_of(shape, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)


def read(path):
    return tensorbin.read_tensor(tensorbin.read_header(path))


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
@pytest.mark.parametrize("layout", ["tile", "row_major"])
@pytest.mark.parametrize("shape", SHAPES)
def test_files_written_by_ttnn_read_exactly(tmp_path, ttnn_tool, dtype, layout, shape):
    values = values_of(shape)
    expected = ts.bf16(values) if dtype == "bf16" else values
    ours = tmp_path / "in.tensorbin"
    ours.write_bytes(ts.tensorbin_bytes(values, dtype=dtype, layout="tile"))
    written = tmp_path / "ttnn.tensorbin"
    ttnn_tool.rewrite(ours, written, None if layout == "tile" else "row_major")
    header = tensorbin.read_header(written)
    assert header.layout == layout.upper() and header.dtype_name == ("BFLOAT16" if dtype == "bf16" else "FLOAT32")
    got = read(written)
    assert got.shape == shape and got.tobytes() == expected.tobytes()
    _, ttnn_layout, _, ttnn_values = ttnn_tool.read(written, tmp_path)
    assert ttnn_values.tobytes() == expected.reshape(-1).tobytes()
    assert ttnn_layout == (1 if layout == "tile" else 0)


def test_row_major_keeps_tile_padding(tmp_path, ttnn_tool):
    """ttnn writes a 40x70 tensor turned ROW_MAJOR from TILE with alignment [64, 96] (spec section 3)."""
    values = values_of((1, 1, 40, 70))
    (tmp_path / "tile.tensorbin").write_bytes(ts.tensorbin_bytes(values))
    ttnn_tool.rewrite(tmp_path / "tile.tensorbin", tmp_path / "rm.tensorbin", "row_major")
    header = tensorbin.read_header(tmp_path / "rm.tensorbin")
    assert header.alignment == (64, 96) and header.matrix() == (64, 96)
    assert read(tmp_path / "rm.tensorbin").tobytes() == ts.bf16(values).tobytes()


@pytest.mark.parametrize("variant", [
    dict(identifier=True, version=1), dict(topology=False), dict(data_align=8),
    dict(identifier=True, version=1, topology=False, data_align=8),
])
def test_header_versions(tmp_path, ttnn_tool, variant):
    values = values_of((1, 1, 40, 70), seed=3)
    path = tmp_path / "v.tensorbin"
    path.write_bytes(ts.tensorbin_bytes(values, **variant))
    header = tensorbin.read_header(path)
    assert header.identifier == variant.get("identifier", False)
    assert header.schema_version == variant.get("version", 0)
    assert read(path).tobytes() == ts.bf16(values).tobytes()
    assert ttnn_tool.read(path, tmp_path)[3].tobytes() == ts.bf16(values).reshape(-1).tobytes()


def test_row_major_alignment_one_and_fp32(tmp_path):
    values = values_of((1, 1, 3, 5))
    path = tmp_path / "rm.tensorbin"
    path.write_bytes(ts.tensorbin_bytes(values, dtype="f32", layout="row_major", alignment=[1]))
    assert np.array_equal(read(path), values)


@pytest.mark.parametrize("dtype,name", [("u32", "UINT32"), ("i32", "INT32")])
def test_integer_tensors(tmp_path, dtype, name):
    values = np.arange(40, dtype=np.float32).reshape(1, 1, 5, 8) * (1 if dtype == "u32" else -3)
    path = tmp_path / "int.tensorbin"
    path.write_bytes(ts.tensorbin_bytes(values, dtype=dtype, layout="row_major"))
    header = tensorbin.read_header(path)
    assert header.dtype_name == name
    assert np.array_equal(read(path), values)


def test_replicated_shards_are_read_once(tmp_path):
    values = values_of((1, 1, 40, 70))
    path = tmp_path / "r.tensorbin"
    path.write_bytes(ts.tensorbin_bytes(values, shards=[((0, i), values) for i in range(4)], mesh=[1, 4],
                                        distribution=[4], placements=[(0, -1)]))
    header = tensorbin.read_header(path)
    assert header.devices == 4
    assert read(path).tobytes() == ts.bf16(values).tobytes()


@pytest.mark.parametrize("dims", [(2,), (3,), (2, 3)])
def test_sharded_tensors_are_reassembled(tmp_path, dims):
    whole = values_of((1, 1, 64, 96), seed=4)
    mesh = (2, 2) if len(dims) == 2 else (1, 2)
    shards = []
    for row in range(mesh[0]):
        for col in range(mesh[1]):
            index = (row, col) if len(dims) == 2 else (col,)
            block = [slice(None)] * 4
            for axis, position in zip(dims, index):
                size = whole.shape[axis] // 2
                block[axis] = slice(position * size, (position + 1) * size)
            shards.append(((row, col), whole[tuple(block)]))
    path = tmp_path / "s.tensorbin"
    path.write_bytes(ts.tensorbin_bytes(whole, shards=shards, mesh=list(mesh), distribution=list(mesh)
                                        if len(dims) == 2 else [2], placements=[(1, d) for d in dims]))
    assert read(path).tobytes() == ts.bf16(whole).tobytes()


def test_metadata_reader_agrees_with_flatc(tmp_path, flatc):
    pairs = [("a/steps", "SizeTValue", 12), ("a/lr", "FloatValue", 0.25), ("a/flag", "BoolValue", True),
             ("s", "StringValue", "x.tensorbin"), ("v", "VectorUInt8", [1, 0, 0, 0, 7, 0, 0, 0]),
             ("i", "IntValue", -3), ("d", "DoubleValue", 1.5), ("c", "CharValue", -2), ("u", "UInt32Value", 9),
             ("b", "BFloat16Value", 0x3F80), ("vi", "VectorInt", [1, -2]), ("vf", "VectorFloat", [0.5]),
             ("vd", "VectorDouble", [2.5]), ("vu", "VectorUInt32", [4, 5]), ("vb", "VectorBFloat16", [1, 2]),
             ("vc", "VectorChar", [-1, 1]), ("vs", "VectorString", ["p", "q"])]
    path = tmp_path / "metadata.flatbuffer"
    path.write_bytes(ts.metadata_bytes(pairs))
    ours = read_metadata(path)
    theirs = ts.flatc_json(flatc, os.path.join(SCHEMAS, "ttml_metadata.fbs"), path, tmp_path)["pairs"]
    assert len(theirs) == len(ours) == len(pairs)
    for pair in theirs:
        value = ours[pair["key"]]
        assert value.type == pair["value_type"]
        inner = pair["value"].get("value", pair["value"].get("values"))
        mine = value.value.tolist() if isinstance(value.value, np.ndarray) else value.value
        assert mine == pytest.approx(inner), pair["key"]


# ---------------------------------------------------------------- whole directories

def llama_dir(tmp_path, cfg, tensors, vocab_rows, tied, ttnn_tool=None, kind="model", optimizer="AdamW",
              model_name="llama", masters=None):
    shapes = support.llama_tt_shapes(cfg, vocab_rows, tied=tied)
    tt = support.expected_llama(cfg, tensors, shapes)
    model = {f"llama/{name}": v.reshape(1, 1, *v.shape) for name, v in tt.items()}
    if kind == "model":
        path = ts.write_dir(tmp_path / "dir", {f"{model_name}/{k}": v for k, v in model.items()})
    else:
        path = ts.training_dir(tmp_path / "dir", model, model_name, optimizer=optimizer, masters=masters)
    if ttnn_tool is not None:
        ttnn_tool.rewrite_dir(path)
    return path, model


def hf_checkpoint(tmp_path, cfg, tensors, name="ckpt"):
    support.write_checkpoint(tmp_path / name, cfg, tensors)
    (tmp_path / name / "tokenizer.json").write_text("{}")
    return tmp_path / name


@pytest.mark.parametrize("tie,tied_tt,vocab", [(False, False, 96), (True, True, 70)])
def test_to_hf_llama_dump_written_by_ttnn(cli, tmp_path, ttnn_tool, backend, tie, tied_tt, vocab):
    cfg = support.llama_config(vocab=vocab, tie=tie)
    tensors = support.llama_tensors(cfg, tie=tie)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    path, _ = llama_dir(tmp_path, cfg, tensors, 96, tied_tt, ttnn_tool)
    status, _, err = cli("to-hf", "llama", "-i", path, "--hf_model", ckpt, "-o", tmp_path / "hf", "--dtype", "f32")
    assert status == 0, err
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert sorted(exported) == sorted(tensors)
    for name, original in tensors.items():
        assert exported[name].tobytes() == ts.bf16(original).tobytes(), name
    # by default a directory's own precision: bfloat16, bit for bit
    status, _, err = cli("to-hf", "llama", path / "metadata.flatbuffer", "--hf_model", ckpt, "-o", tmp_path / "hf16")
    assert status == 0, err
    assert json.loads((tmp_path / "hf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    exported = raw_safetensors(tmp_path / "hf16" / "model.safetensors")
    for name, original in tensors.items():
        assert exported[name][:2] == ("BF16", list(original.shape)), name
        assert exported[name][2] == original.astype(ml_dtypes.bfloat16).tobytes(), name


@pytest.mark.parametrize("optimizer", ["AdamW", "old", "AdamWFullPrecision"])
def test_to_hf_training_states(cli, tmp_path, optimizer):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    shapes = support.llama_tt_shapes(cfg, 96)
    exact = {f"llama/{n}": v.reshape(1, 1, *v.shape) for n, v in support.expected_llama(cfg, tensors, shapes).items()}
    masters = exact if optimizer == "AdamWFullPrecision" else None
    path, _ = llama_dir(tmp_path, cfg, tensors, 96, False, kind="training", optimizer=optimizer, masters=masters)
    status, _, err = cli("to-hf", "llama", "-i", path, "--hf_model", ckpt, "-o", tmp_path / "hf")
    assert status == 0, err
    exported = raw_safetensors(tmp_path / "hf" / "model.safetensors")
    for name, original in tensors.items():  # master weights are float32, the model copy bfloat16
        expected = original if masters else original.astype(ml_dtypes.bfloat16)
        assert exported[name][0] == ("F32" if masters else "BF16"), name
        assert exported[name][2] == expected.tobytes(), name
    assert ("master weights" in err) == bool(masters)


def test_to_hf_gpt2_dump(cli, tmp_path, ttnn_tool, backend):
    cfg = support.gpt2_config(vocab=90)
    tensors = support.gpt2_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    shapes = support.gpt2_tt_shapes(cfg, 96, cfg["n_positions"])
    tt = support.expected_gpt2(tensors, shapes)
    path = ts.write_dir(tmp_path / "dir", {f"gpt2/transformer/{n}": v.reshape(1, 1, *v.shape) for n, v in tt.items()})
    ttnn_tool.rewrite_dir(path)
    status, _, err = cli("to-hf", "gpt2", "-i", path, "--hf_model", ckpt, "-o", tmp_path / "hf")
    assert status == 0, err
    exported = raw_safetensors(tmp_path / "hf" / "model.safetensors")
    for name, original in tensors.items():
        assert exported[name][2] == original.astype(ml_dtypes.bfloat16).tobytes(), name


def test_inspect_model_dump_and_training_state(cli, tmp_path):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    dump, model = llama_dir(tmp_path / "a", cfg, tensors, 96, False)
    status, out, err = cli("inspect", dump, "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["format"] == "flatbuffer" and not info["training_state"]
    assert info["kind"].startswith("model dump: parameters under llama/llama")
    rows = {r["name"]: r for r in info["parameters"]}
    assert set(rows) == {f"llama/{n}" for n in model}
    fc = rows["llama/llama/fc/weight"]
    assert fc["shape"] == [1, 1, 96, 32] and fc["data_type"] == "BFLOAT16" and fc["layout"] == "TILE"
    assert fc["devices"] == 1 and fc["file"] == "llama_llama_fc_weight_value.tensorbin"
    state, _ = llama_dir(tmp_path / "b", cfg, tensors, 96, False, kind="training")
    status, out, _ = cli("inspect", state / "metadata.flatbuffer")
    assert status == 0
    assert out.startswith("kind: training state: model under llama/llama; optimizer AdamW: exp_avg, exp_avg_sq, "
                          "steps 7; scheduler: m_base_lr=0.0003, m_last_lr=0.0003, m_last_step=7")
    assert "\noptimizer (" in out and "AdamW/exp_avg/llama/fc/weight" in out


def test_check_trained_models_as_directories(cli, tmp_path, ttnn_tool):
    from test_check import CORPUS, TRAINED, run_check

    for family in ("llama", "gpt2"):
        model = os.path.join(TRAINED, family)
        cfg = json.load(open(os.path.join(model, "config.json")))
        tensors = load_file(os.path.join(model, "model.safetensors"))
        if family == "llama":
            shapes = support.llama_tt_shapes(cfg, 32 * -(-cfg["vocab_size"] // 32), tied=cfg.get("tie_word_embeddings"))
            tt = support.expected_llama(cfg, tensors, shapes)
            root = "llama/llama"
        else:
            shapes = support.gpt2_tt_shapes(cfg, 32 * -(-cfg["vocab_size"] // 32), cfg["n_positions"])
            tt = support.expected_gpt2(tensors, shapes)
            root = "gpt2/transformer"
        path = ts.write_dir(tmp_path / family, {f"{root}/{n}": v.reshape(1, 1, *v.shape) for n, v in tt.items()},
                            dtype="f32")
        ttnn_tool.rewrite_dir(path)
        status, result, err = run_check(cli, family, path, model, "--text", CORPUS)
        assert status == 0 and result["ok"], err
    wrong = support.expected_llama(cfg := json.load(open(os.path.join(TRAINED, "llama", "config.json"))),
                                   load_file(os.path.join(TRAINED, "llama", "model.safetensors")),
                                   support.llama_tt_shapes(cfg, 32 * -(-cfg["vocab_size"] // 32),
                                                           tied=cfg.get("tie_word_embeddings")), meta_style=True)
    path = ts.write_dir(tmp_path / "wrong", {f"llama/llama/{n}": v.reshape(1, 1, *v.shape) for n, v in wrong.items()},
                        dtype="f32")
    status, result, err = run_check(cli, "llama", path, os.path.join(TRAINED, "llama"), "--text", CORPUS)
    assert status == 1 and not result["ok"]


# ---------------------------------------------------------------- hostile directories

def one_error_line(err):
    return err.startswith("ttconv: error: ") and err.count("\n") == 1 and "Traceback" not in err


def small_dir(path, **options):
    return ts.write_dir(path, {"m/llama/fc/weight": values_of((1, 1, 40, 70))}, **options)


def replace_pairs(path, change):
    """Rewrite the metadata with change(list of (key, type, value)) applied."""
    values = read_metadata(path / "metadata.flatbuffer")
    pairs = [(k, v.type, v.value) for k, v in values.items()]
    (path / "metadata.flatbuffer").write_bytes(ts.metadata_bytes(change(pairs)))


def renamed_file(name):
    def change(pairs):
        return [(k, t, name if k == "m/llama/fc/weight/value" else v) for k, t, v in pairs]
    return change


def corrupt_header_size(path):
    tensor = path / "m_llama_fc_weight_value.tensorbin"
    tensor.write_bytes((10 ** 9).to_bytes(8, "little") + tensor.read_bytes()[8:])


def shard_past_end(path):
    tensor = path / "m_llama_fc_weight_value.tensorbin"
    tensor.write_bytes(tensor.read_bytes()[:-100])


def symlink_out(path):
    outside = path.parent / "outside.tensorbin"
    outside.write_bytes((path / "m_llama_fc_weight_value.tensorbin").read_bytes())
    (path / "m_llama_fc_weight_value.tensorbin").unlink()
    os.symlink(outside, path / "m_llama_fc_weight_value.tensorbin")


HOSTILE = {
    "parent": (lambda p: replace_pairs(p, renamed_file("../x.tensorbin")), "not a plain file name"),
    "absolute": (lambda p: replace_pairs(p, renamed_file("/etc/passwd.tensorbin")), "not a plain file name"),
    "backslash": (lambda p: replace_pairs(p, renamed_file("..\\\\x.tensorbin")), "not a plain"),
    "symlink": (symlink_out, "leads outside the checkpoint directory"),
    "missing": (lambda p: (p / "m_llama_fc_weight_value.tensorbin").unlink(), "is missing"),
    "header_size": (corrupt_header_size, "header_size 1000000000 does not fit"),
    "truncated": (shard_past_end, "runs past the end of the file"),
    "shape": (lambda p: replace_pairs(p, lambda pairs: [
        (k, t, np.frombuffer(np.array([1, 1, 40, 71], "<u4").tobytes(), np.uint8) if k.endswith("/shape") else v)
        for k, t, v in pairs]), "shape is [1, 1, 40, 71] but"),
    "union": (lambda p: replace_pairs(p, lambda pairs: pairs + [("x", 40, None)]), "unknown value type 40"),
    "empty": (lambda p: (p / "metadata.flatbuffer").write_bytes(b""), "file is empty"),
    "garbage": (lambda p: (p / "metadata.flatbuffer").write_bytes(b"\xff" * 64), "not tt-train metadata"),
    "no_metadata": (lambda p: (p / "metadata.flatbuffer").unlink(), "a directory without metadata.flatbuffer"),
    "tensor_garbage": (lambda p: (p / "m_llama_fc_weight_value.tensorbin").write_bytes(
        (24).to_bytes(8, "little") + b"\x7f" * 40), "corrupt tensor header"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_directories_end_in_one_line(cli, tmp_path, case):
    make_bad, message = HOSTILE[case]
    path = small_dir(tmp_path / "dir")
    make_bad(path)
    before = {p: p.read_bytes() for p in path.iterdir() if p.is_file() and not p.is_symlink()}
    status, _, err = cli("inspect", path)
    assert status == 1 and one_error_line(err) and message in err, err
    cfg = support.llama_config()
    ckpt = hf_checkpoint(tmp_path, cfg, support.llama_tensors(cfg))
    status, _, err = cli("to-hf", "llama", "-i", path, "--hf_model", ckpt, "-o", tmp_path / "hf")
    assert status == 1 and one_error_line(err), err
    assert not (tmp_path / "hf").exists()
    assert before == {p: p.read_bytes() for p in before}


def test_to_hf_writes_nothing_when_a_tensor_fails_midway(cli, tmp_path):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    path, _ = llama_dir(tmp_path, cfg, tensors, 96, False)
    shard_past_end_file = path / "llama_llama_llama_block_1_mlp_w2_weight_value.tensorbin"
    shard_past_end_file.write_bytes(shard_past_end_file.read_bytes()[:-64])
    status, _, err = cli("to-hf", "llama", "-i", path, "--hf_model", ckpt, "-o", tmp_path / "hf")
    assert status == 1 and one_error_line(err) and "w2_weight_value.tensorbin" in err, err
    assert not (tmp_path / "hf").exists()


def test_check_bf16_trained_llama_directory(cli, tmp_path, ttnn_tool):
    """A bfloat16 checkpoint and its bf16 directory are the same model: losses to 1e-4, every top-1."""
    import shutil

    from test_check import CORPUS, TRAINED, run_check

    source = os.path.join(TRAINED, "llama")
    cfg = json.load(open(os.path.join(source, "config.json")))
    tensors = {k: ts.bf16(v) for k, v in load_file(os.path.join(source, "model.safetensors")).items()}
    support.write_checkpoint(tmp_path / "bf16", cfg, tensors, dtype="BF16")
    shutil.copy(os.path.join(source, "tokenizer.json"), tmp_path / "bf16")
    shapes = support.llama_tt_shapes(cfg, 32 * -(-cfg["vocab_size"] // 32), tied=cfg.get("tie_word_embeddings"))
    tt = support.expected_llama(cfg, tensors, shapes)
    path = ts.training_dir(tmp_path / "dir", {f"llama/{n}": v.reshape(1, 1, *v.shape) for n, v in tt.items()},
                           "llama")
    ttnn_tool.rewrite_dir(path)
    status, result, err = run_check(cli, "llama", path, tmp_path / "bf16", "--text", CORPUS)
    assert status == 0 and result["ok"] and result["top1_agreement"] == 1.0, err
    assert abs(result["tt_loss"] - result["hf_loss"]) <= 1e-4 * result["hf_loss"]


def test_directory_input_with_format_msgpack_is_refused_in_one_line(cli, tmp_path):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    ckpt = hf_checkpoint(tmp_path, cfg, tensors)
    path, _ = llama_dir(tmp_path, cfg, tensors, 96, False)
    status, _, err = cli("llama", "-i", path, "--hf_model", ckpt, "-o", tmp_path / "out.msgpack", "--format", "msgpack")
    assert status == 1 and one_error_line(err) and "is a tt-train checkpoint directory" in err, err
    assert not (tmp_path / "out.msgpack").exists()
