"""Command line behaviour: flags, one-line errors, exit codes, atomic output, signals."""
import json
import os
import pstats
import signal
import subprocess
import sys

import numpy as np
import pytest

import support
from ttconv import interrupts, kernels

LLAMA_MINI = os.path.join(support.FIXTURES, "llama-mini")
GPT2_MINI = os.path.join(support.FIXTURES, "gpt2-mini")
LLAMA_ARGS = ["llama", "-i", f"{LLAMA_MINI}/init.msgpack", "--hf_model", LLAMA_MINI]


@pytest.fixture(autouse=True)
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def one_error_line(err):
    lines = err.strip("\n").split("\n")
    return len(lines) == 1 and lines[0].startswith("ttconv: error: ") and "Traceback" not in err


def leftovers(directory):
    return [n for n in os.listdir(directory) if n.endswith(".partial")]


def test_version_names_backend(cli):
    with pytest.raises(SystemExit) as exit_:
        cli("--version")
    assert exit_.value.code == 0


def test_version_output(capsys):
    from ttconv.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert f"backend: {kernels.BACKEND}" in capsys.readouterr().out


def test_the_fast_version_line_is_the_parsers(capsys, monkeypatch):
    # `ttconv --version` alone is answered before the command line is built; it must say the same
    from ttconv.__main__ import run
    from ttconv.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    parsed = capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["ttconv", "--version"])
    previous = {signum: signal.getsignal(signum) for signum in interrupts.SIGNALS}
    try:
        assert run() == 0
    finally:
        interrupts.restore(previous)
    assert capsys.readouterr().out == parsed and parsed.startswith("ttconv ")


@pytest.mark.parametrize("command,flags", [
    ("llama", ["--input_path", "--output_path", "--hf_model", "--meta_style", "--dump_tokenizer_path", "-i", "-o",
               "-t", "--dry-run", "--revision", "--quiet", "--verbose"]),
    ("gpt2", ["INPUT_FILE", "OUTPUT_FILE", "--input_file", "--output_file", "--hf_model", "-t", "--dry-run"]),
    ("inspect", ["PATH", "--json", "metadata.flatbuffer"]),
    ("to-hf", ["--hf_model", "--output_dir", "--dtype", "--input_path"]),
])
def test_help_lists_flags(capsys, command, flags):
    from ttconv.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text


def test_long_flag_forms(cli, tmp_path):
    out = tmp_path / "o.msgpack"
    status, _, err = cli("llama", "--input_path", f"{LLAMA_MINI}/init.msgpack", "--output_path", out,
                         "--hf_model", LLAMA_MINI, "--dump_tokenizer_path", tmp_path / "t.json")
    assert status == 0, err
    assert out.exists() and (tmp_path / "t.json").exists()
    assert "tensors" in err and "MB/s" in err  # the summary line


def test_llama_default_paths(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tinyllama_init.msgpack").write_bytes(open(f"{LLAMA_MINI}/init.msgpack", "rb").read())
    status, _, err = cli("llama", "--hf_model", LLAMA_MINI)
    assert status == 0, err
    assert (tmp_path / "data" / "tinyllama_exported.msgpack").exists()


def test_default_hub_model_offline_is_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, _, err = cli("llama")
    assert status == 1 and one_error_line(err)
    assert "TinyLlama/TinyLlama_v1.1" in err and "HF_HUB_OFFLINE" in err


def test_gpt2_needs_files(cli):
    status, _, err = cli("gpt2", "--hf_model", GPT2_MINI)
    assert status == 1 and one_error_line(err) and "gpt2 needs OUTPUT_FILE" in err


def test_gpt2_single_positional_says_how_to_go_without_init(cli, tmp_path):
    status, _, err = cli("gpt2", tmp_path / "out.msgpack", "--hf_model", GPT2_MINI)
    assert status == 1 and one_error_line(err)
    assert "give INPUT_FILE OUTPUT_FILE" in err and "-o OUTPUT_FILE alone to build it from config.json" in err
    assert not (tmp_path / "out.msgpack").exists()


@pytest.mark.parametrize("case", ["missing init", "init is a directory", "init not msgpack", "wrong family",
                                  "gpt2 checkpoint for llama", "missing tensor", "shape mismatch",
                                  "kv heads wrong", "vocab too large"])
def test_user_errors_are_one_line_without_output(cli, tmp_path, case):
    ckpt, init = tmp_path / "ckpt", tmp_path / "init.msgpack"
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    shapes = support.llama_tt_shapes(cfg, 96)
    expect = {"missing init": "cannot open", "init is a directory": "init.msgpack",
              "init not msgpack": "expected the map", "wrong family": "no recognisable tt-train llama",
              "gpt2 checkpoint for llama": "use 'ttconv gpt2'", "missing tensor": "has no tensor",
              "shape mismatch": "shape mismatch", "kv heads wrong": "num_key_value_heads",
              "vocab too large": "vocabulary is larger"}[case]
    if case == "missing tensor":
        del tensors["model.layers.1.mlp.up_proj.weight"]
    if case == "shape mismatch":
        shapes["llama_block_0/mlp/w1/weight"] = (40, 32)
    if case == "kv heads wrong":
        cfg = dict(cfg, num_key_value_heads=4)
    if case == "vocab too large":
        shapes["fc/weight"] = shapes["tok_emb/weight"] = (64, 32)
    support.write_checkpoint(ckpt, cfg, tensors)
    init.write_bytes(support.init_file_bytes(shapes))
    if case == "init is a directory":
        init.unlink()
        init.mkdir()
    if case == "missing init":
        init.unlink()
    if case == "init not msgpack":
        init.write_bytes(b"[1, 2, 3]\n")
    if case == "wrong family":
        init.write_bytes(open(f"{GPT2_MINI}/init.msgpack", "rb").read())
    if case == "gpt2 checkpoint for llama":
        ckpt = GPT2_MINI
    before = init.read_bytes() if init.is_file() else None
    out = tmp_path / "out.msgpack"
    status, _, err = cli("llama", "-i", init, "-o", out, "--hf_model", ckpt)
    assert status == 1 and one_error_line(err), err
    assert expect in err
    assert not out.exists() and not leftovers(tmp_path)
    if before is not None:
        assert init.read_bytes() == before


def test_shape_mismatch_names_key_shapes_and_cause(cli, tmp_path):
    cfg = support.llama_config()
    shapes = support.llama_tt_shapes(cfg, 96)
    shapes["llama_block_1/attention/kv_linear/weight"] = (64, 32)
    support.write_checkpoint(tmp_path / "ckpt", cfg, support.llama_tensors(cfg))
    (tmp_path / "init.msgpack").write_bytes(support.init_file_bytes(shapes))
    status, _, err = cli("llama", "-i", tmp_path / "init.msgpack", "-o", tmp_path / "o", "--hf_model",
                         tmp_path / "ckpt")
    assert "llama/llama/llama_block_1/attention/kv_linear/weight" in err
    assert "[64, 32]" in err and "[16, 32]" in err and "num_key_value_heads" in err


def test_verbose_shows_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ttconv", "llama", "-i", tmp_path / "nope", "-o",
                             tmp_path / "o", "--hf_model", LLAMA_MINI, "--verbose"], capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr and "TtFileError" in result.stderr


@pytest.mark.parametrize("backend", ["bogus", "c-ish"])
@pytest.mark.parametrize("argv", [["--version"], ["inspect", f"{LLAMA_MINI}/init.msgpack"]])
def test_a_backend_that_does_not_exist_is_one_error_line(backend, argv):
    result = subprocess.run([sys.executable, "-m", "ttconv", *argv], capture_output=True, text=True,
                            env={**os.environ, "TTCONV_BACKEND": backend})
    assert result.returncode == 1 and one_error_line(result.stderr), result.stderr
    assert f"TTCONV_BACKEND must be 'c' or 'jax', not '{backend}'" in result.stderr and not result.stdout


def test_existing_output_survives_a_failed_run(cli, tmp_path):
    out = tmp_path / "out.msgpack"
    out.write_bytes(b"precious")
    bad_init = tmp_path / "bad.msgpack"
    bad_init.write_bytes(open(f"{LLAMA_MINI}/init.msgpack", "rb").read()[:-10])
    status, _, err = cli("llama", "-i", bad_init, "-o", out, "--hf_model", LLAMA_MINI)
    assert status == 1 and one_error_line(err)
    assert out.read_bytes() == b"precious" and not leftovers(tmp_path)


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_output_onto_input_is_refused(cli, tmp_path, link):
    init = tmp_path / "init.msgpack"
    init.write_bytes(open(f"{LLAMA_MINI}/init.msgpack", "rb").read())
    before = init.read_bytes()
    out = init if link == "same" else tmp_path / "alias.msgpack"
    if link == "symlink":
        out.symlink_to(init)
    if link == "hardlink":
        os.link(init, out)
    status, _, err = cli("llama", "-i", init, "-o", out, "--hf_model", LLAMA_MINI)
    assert status == 1 and one_error_line(err) and "same file as input" in err
    assert init.read_bytes() == before and not leftovers(tmp_path)


def test_output_onto_checkpoint_is_refused(cli, tmp_path, fixture_copy):
    model = fixture_copy("llama-mini")
    before = (model / "model.safetensors").read_bytes()
    status, _, err = cli("llama", "-i", model / "init.msgpack", "-o", model / "model.safetensors",
                         "--hf_model", model)
    assert status == 1 and "same file as input" in err
    assert (model / "model.safetensors").read_bytes() == before


def test_full_disk_leaves_nothing(cli, tmp_path, monkeypatch):
    import errno

    real_write = os.write
    written = []

    def full_after_a_while(fd, data):
        written.append(len(data))
        if len(written) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("ttconv.output.BUFFER_BYTES", 4096)
    monkeypatch.setattr(os, "write", full_after_a_while)
    out = tmp_path / "out.msgpack"
    status, _, err = cli(*LLAMA_ARGS, "-o", out)
    monkeypatch.undo()
    assert status == 1 and one_error_line(err) and "no space left on device" in err
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_conversion_leaves_nothing(cli, tmp_path, monkeypatch, signum, status):
    real_encode = kernels.encode
    calls = []

    def encode_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signum)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(kernels, "encode", encode_then_signal)
    out = tmp_path / "out.msgpack"
    code, _, err = cli(*LLAMA_ARGS, "-o", out)
    assert code == status and err == f"ttconv: {'interrupted' if status == 130 else 'terminated'}; {out} was not written\n"
    assert not out.exists() and not leftovers(tmp_path)


def test_nan_and_inf_are_kept_and_named(cli, tmp_path):
    cfg = support.llama_config()
    tensors = support.llama_tensors(cfg)
    tensors["model.layers.0.mlp.up_proj.weight"][0, :3] = [np.nan, np.inf, -np.inf]
    support.write_checkpoint(tmp_path / "ckpt", cfg, tensors)
    shapes = support.llama_tt_shapes(cfg, 96)
    (tmp_path / "init.msgpack").write_bytes(support.init_file_bytes(shapes))
    out = tmp_path / "out.msgpack"
    status, _, err = cli("llama", "-i", tmp_path / "init.msgpack", "-o", out, "--hf_model", tmp_path / "ckpt")
    assert status == 0
    assert "NaN or Inf" in err and "llama/llama/llama_block_0/mlp/w3/weight/value/data (3)" in err
    w3 = support.tt_tensor(support.read_tt(out), "llama/llama", "llama_block_0/mlp/w3/weight")
    assert np.isnan(w3[0, 0]) and w3[0, 1] == np.inf and w3[0, 2] == -np.inf


def test_same_inputs_give_identical_bytes(cli, tmp_path):
    for name in ("a", "b"):
        assert cli(*LLAMA_ARGS, "-o", tmp_path / name)[0] == 0
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_quiet_leaves_only_the_summary_line(cli, tmp_path):
    status, out, err = cli(*LLAMA_ARGS, "-t", tmp_path / "t.json", "-o", tmp_path / "o", "--quiet")
    assert status == 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("ttconv: wrote ") and "119,104 parameters" in err


def test_dry_run_writes_nothing_and_lists_plan(cli, tmp_path):
    out = tmp_path / "out.msgpack"
    status, text, _ = cli(*LLAMA_ARGS, "-o", out, "--dry-run")
    assert status == 0 and not out.exists()
    assert "llama/llama/llama_block_0/attention/kv_linear/weight/value/data [64, 64] <- " \
           "model.layers.0.self_attn.k_proj.weight (RoPE interleave, 2 heads) + " \
           "model.layers.0.self_attn.v_proj.weight" in text


def test_dry_run_plan_matches_real_conversion(cli, tmp_path):
    cfg = support.llama_config(vocab=70)
    shapes = support.llama_tt_shapes(cfg, 96)
    tensors = support.llama_tensors(cfg)
    tensors["model.vision_tower.proj.weight"] = np.ones(32, np.float32)
    support.write_checkpoint(tmp_path / "ckpt", cfg, tensors)
    import msgpack
    extra = [("llama/llama/extra/weight/value/shape", msgpack.packb([12, np.array([1, 1, 1, 2], "<u4").tobytes()])),
             ("llama/llama/extra/weight/value/data", msgpack.packb([10, [1, 2]]))]
    init = tmp_path / "init.msgpack"
    init.write_bytes(support.init_file_bytes(shapes, extra_entries=extra))
    args = ["llama", "-i", init, "--hf_model", tmp_path / "ckpt", "-o", tmp_path / "out.msgpack"]
    status, plan_text, _ = cli(*args, "--dry-run")
    planned = {line.split()[0] for line in plan_text.splitlines() if line.startswith("  ")}
    status, _, err = cli(*args)
    before, after = dict(support.tt_raw_entries(init)), dict(support.tt_raw_entries(tmp_path / "out.msgpack"))
    changed = {k for k in before if before[k] != after[k]}
    assert changed == planned
    assert "left unchanged (no checkpoint source): llama/llama/extra/weight/value/data" in plan_text
    assert "checkpoint tensors not used: model.vision_tower.proj.weight" in plan_text
    assert "model.vision_tower.proj.weight" in err


def test_inputs_never_modified(cli, tmp_path, fixture_copy):
    model = fixture_copy("llama-mini")
    snapshot = {p: p.read_bytes() for p in model.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in snapshot}
    assert cli("llama", "-i", model / "init.msgpack", "-o", tmp_path / "o", "--hf_model", model,
               "-t", tmp_path / "t.json")[0] == 0
    for p, data in snapshot.items():
        assert p.read_bytes() == data and p.stat().st_mtime_ns == mtimes[p]


def test_console_script_equals_module(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "ttconv")
    if not os.path.exists(script):
        pytest.fail("the ttconv console script is not installed next to the interpreter")
    a = subprocess.run([script, "inspect", f"{LLAMA_MINI}/init.msgpack", "--json"], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "ttconv", "inspect", f"{LLAMA_MINI}/init.msgpack", "--json"],
                       capture_output=True, text=True)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    assert json.loads(a.stdout)["total_parameters"] == 19


def buffered_env():
    """The environment without PYTHONUNBUFFERED (set on some machines), so that stdout is buffered as
    a user's shell has it."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_the_process_ends_with_the_commands_status_and_every_line_written():
    # the process leaves without the interpreter's teardown: what is buffered must be flushed first
    argv = [sys.executable, "-m", "ttconv", "to-hf", "--help"]
    env = {**buffered_env(), "COLUMNS": "100"}
    helped = subprocess.run(argv, capture_output=True, text=True, env=env)
    unbuffered = subprocess.run(argv, capture_output=True, text=True, env={**env, "PYTHONUNBUFFERED": "1"})
    assert helped.returncode == unbuffered.returncode == 0
    assert helped.stdout == unbuffered.stdout and len(helped.stdout) > 4096
    usage = subprocess.run([sys.executable, "-m", "ttconv", "inspect", LLAMA_MINI, "--no-such-flag"],
                           capture_output=True, text=True, env=env)
    assert usage.returncode == 2 and "unrecognized arguments: --no-such-flag" in usage.stderr


def test_a_reader_that_went_away_is_a_quiet_failure():
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read the listing
    try:
        done = subprocess.run([sys.executable, "-m", "ttconv", "inspect", f"{LLAMA_MINI}/init.msgpack"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=buffered_env())
    finally:
        os.close(write_end)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_a_profiled_command_still_writes_its_profile(tmp_path):
    # a profiler writes its results at the interpreter's exit, which the command's fast exit skips
    profile = tmp_path / "version.prof"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", profile, "-m", "ttconv", "--version"],
                          capture_output=True, text=True, env=buffered_env())
    assert done.returncode == 0 and done.stdout.startswith("ttconv ")
    assert pstats.Stats(str(profile)).total_calls > 0


def test_unexpected_io_error_is_one_line(cli, tmp_path, monkeypatch):
    import errno

    from ttconv.hf.checkpoint import Checkpoint

    def failing_read(self, info, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", info.path)

    monkeypatch.setattr(Checkpoint, "read_rows", failing_read)
    out = tmp_path / "out.msgpack"
    status, _, err = cli(*LLAMA_ARGS, "-o", out)
    assert status == 1 and one_error_line(err)
    assert "model.safetensors: Input/output error" in err
    assert not out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_before_or_after_the_command(cli, tmp_path, where):
    args = [*LLAMA_ARGS, "-o", tmp_path / "o", "-t", tmp_path / "t.json"]
    status, _, err = cli("--quiet", *args) if where == "before" else cli(*args, "--quiet")
    assert status == 0 and "wrote tokenizer" not in err and err.startswith("ttconv: wrote ")


def test_gpt2_positional_and_flag_disagree(cli, tmp_path):
    status, _, err = cli("gpt2", f"{GPT2_MINI}/init.msgpack", tmp_path / "a", "-o", tmp_path / "b",
                         "--hf_model", GPT2_MINI)
    assert status == 1 and "OUTPUT_FILE and -o name different files" in err
