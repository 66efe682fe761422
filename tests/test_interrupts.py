"""SIGINT and SIGTERM at any instant: no temporary file, no output, one line, exit 130/143."""
import concurrent.futures
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import support
from test_ttdir_out import ttnn_tensors
from ttconv import interrupts, output

SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".partial"))


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt), as an interpreter started with SIGINT at its default
    disposition has it; one started with SIGINT ignored (a background job of a non-interactive shell) has not."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def installed():
    previous = interrupts.install()
    yield
    interrupts.restore(previous)


def test_signals_are_noted_and_raised_at_the_next_safe_point(installed):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # a raising handler would have raised by now
    with pytest.raises(interrupts.Interrupted):
        interrupts.check()
    interrupts.check()  # raised once only
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)
    with pytest.raises(interrupts.Terminated):
        interrupts.check()


def test_immediate_blocks_raise_at_once(installed):
    with pytest.raises(interrupts.Interrupted):
        with interrupts.immediate():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
            pytest.fail("the signal did not interrupt the block")


def test_held_delivers_a_signal_when_the_block_ends(installed):
    seen_inside = []
    with interrupts.held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        seen_inside.append(interrupts._State.pending)
    assert seen_inside == [None]  # deferred while held
    with pytest.raises(interrupts.Interrupted):
        interrupts.check()


def test_held_without_handlers_installed_raises_at_the_end(python_sigint):
    """Library use: Python's own SIGINT handler raises KeyboardInterrupt when the block ends."""
    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            reached_end_of_block = True
    assert reached_end_of_block


def test_held_without_signal_restores_the_handlers(installed):
    before = signal.getsignal(signal.SIGINT)
    with interrupts.held():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_held_in_another_thread_leaves_the_handlers_alone(installed):
    seen = []

    def worker():
        with interrupts.held():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def test_finished_handlers_ignore_signals(installed):
    interrupts.finish()
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # reaching here without an exception is the point


def test_outcome():
    assert interrupts.outcome(KeyboardInterrupt()) == (130, "interrupted")
    assert interrupts.outcome(interrupts.Terminated()) == (143, "terminated")


def signal_inside(monkeypatch, module, name, signum, after=True):
    """Make module.name send signum to this process while it runs (after or before the real call)."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        if not after:
            os.kill(os.getpid(), signum)
        result = real(*args, **kwargs)
        if after:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_temporary_file_is_created(installed, monkeypatch, tmp_path, signum):
    signal_inside(monkeypatch, output.tempfile, "mkstemp", signum)
    with pytest.raises((KeyboardInterrupt, interrupts.Terminated)):
        with output.atomic_output(tmp_path / "out") as out:
            out.write(b"never")
    assert os.listdir(tmp_path) == []


def test_library_use_keeps_python_s_keyboard_interrupt(python_sigint, monkeypatch, tmp_path):
    """Without install(), Ctrl-C raises as usual, and a signal while the temporary file is created
    still leaves no file: the creation is held and the exception comes right after it."""
    signal_inside(monkeypatch, output.tempfile, "mkstemp", signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with output.atomic_output(tmp_path / "out") as out:
            out.write(b"never")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["fsync", "replace"])
def test_signal_after_the_last_write_lets_the_file_complete(installed, monkeypatch, tmp_path, name):
    signal_inside(monkeypatch, output.os, name, signal.SIGINT)
    (tmp_path / "out").write_bytes(b"previous")
    with output.atomic_output(tmp_path / "out") as out:
        out.write(b"new")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_bytes() == b"new"
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()  # the command line's last check: it then reports the file as written


def test_signal_while_writing_leaves_nothing(installed, monkeypatch, tmp_path):
    (tmp_path / "out").write_bytes(b"previous")
    with pytest.raises(interrupts.Terminated):
        with output.atomic_output(tmp_path / "out") as out:
            out.write(b"part")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            out.write(b"more")
            pytest.fail("the write after the signal went through")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_bytes() == b"previous"


def test_signal_during_the_rename_lets_the_run_complete(cli, monkeypatch, tmp_path):
    signal_inside(monkeypatch, output.os, "replace", signal.SIGTERM)
    out = tmp_path / "out.msgpack"
    mini = os.path.join(support.FIXTURES, "llama-mini")
    status, _, err = cli("llama", "-i", f"{mini}/init.msgpack", "--hf_model", mini, "-o", out)
    assert status == 0 and err.startswith(f"ttconv: wrote {out}: 19 tensors") and err.count("\n") == 1
    assert out.stat().st_size > 0 and leftovers(tmp_path) == []


def test_signal_before_an_import_completes_is_not_an_import_error(installed):
    sys.modules.pop("json.tool", None)
    with interrupts.held():
        os.kill(os.getpid(), signal.SIGINT)
        interrupts.import_held("json.tool")
    assert "json.tool" in sys.modules
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()


def test_an_import_pauses_the_collector_and_freezes_what_it_built(installed):
    sys.modules.pop("json.tool", None)
    seen = []

    def collection(phase, info):
        if "json.tool" in sys.modules:  # its import has begun
            seen.append(phase)

    thresholds = gc.get_threshold()
    gc.callbacks.append(collection)
    try:
        gc.collect()
        frozen = gc.get_freeze_count()
        seen.clear()
        gc.set_threshold(1)  # a collection at every new tracked object, unless the collector is paused
        interrupts.import_held("json.tool")
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(collection)
    assert "json.tool" in sys.modules and seen == [] and gc.isenabled()
    assert gc.get_freeze_count() > frozen
    gc.unfreeze()
    interrupts.import_held("json.tool")  # imported already: nothing more is frozen
    assert gc.get_freeze_count() == 0


def test_an_import_leaves_a_paused_collector_paused(installed):
    gc.disable()
    try:
        interrupts.import_held("json")
        assert not gc.isenabled()
    finally:
        gc.enable()


RUNS = 50


@pytest.fixture(scope="module")
def sizeable_conversion(tmp_path_factory):
    """A Llama of about 9M parameters (45 MB of output), so that reading, writing, fsync and
    rename each take a noticeable share of a run."""
    folder = tmp_path_factory.mktemp("sizeable")
    cfg = support.llama_config(vocab=4000, hidden=512, layers=2, heads=8, kv_heads=4, inter=1024)
    support.write_checkpoint(folder / "ckpt", cfg, support.llama_tensors(cfg))
    (folder / "init.msgpack").write_bytes(support.init_file_bytes(support.llama_tt_shapes(cfg, 4000)))
    return ["llama", "-i", str(folder / "init.msgpack"), "--hf_model", str(folder / "ckpt")]


def handlers_installed(pid):
    """True once the process catches SIGTERM (ttconv's handlers are in place), per /proc."""
    try:
        with open(f"/proc/{pid}/status") as status:
            caught = next(int(line.split()[1], 16) for line in status if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return True  # the process is gone
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def run_ttconv(args, out, signum=None, delay=0.0):
    """Run a conversion; with signum, send it delay seconds after ttconv's handlers are installed.

    Before that instant only Python itself runs (its own start-up and imports), not ttconv.
    Returns (exit status, stderr, seconds from handlers installed to exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "ttconv", *args, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not handlers_installed(proc.pid):
        time.sleep(0.0005)
    installed = time.perf_counter()
    if signum is not None:
        time.sleep(delay)
        proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.perf_counter() - installed


def signalled_runs(args, tmp_path, name, whole_run, runs, prepare=None):
    """Run ttconv ARGS -o run<k>/NAME `runs` times (two at a time), SIGINT and SIGTERM in turn sent at
    instants spread over 1.1 whole runs (prepare(folder) first, when given). A whole run is the shorter
    of whole_run and one more run timed here: a reference run slowed by a passing load would spread
    the instants past the end of most runs. Yields (context, signum, status, stderr, folder) in order,
    each run's stderr checked to be one line without a traceback."""

    def prepared(folder):
        folder.mkdir()
        if prepare is not None:
            prepare(folder)
        return folder

    timed = run_ttconv(args, prepared(tmp_path / "timing") / name)
    assert timed[0] == 0, timed[1]
    whole_run = min(whole_run, timed[2])

    def one(k):
        folder = prepared(tmp_path / f"run{k}")
        signum = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
        delay = whole_run * 1.1 * k / (runs - 1)
        status, err, _ = run_ttconv(args, folder / name, signum, delay)
        return k, delay, signum, status, err, folder

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for k, delay, signum, status, err, folder in pool.map(one, range(runs)):
            context = f"run {k}: {signum.name} {delay * 1000:.0f} ms after the handlers, exit {status}: {err!r}"
            assert "Traceback" not in err and err.count("\n") == 1, context
            yield context, signum, status, err, folder


def test_signals_at_fifty_instants_leave_no_trace(sizeable_conversion, tmp_path):
    reference = tmp_path / "reference.msgpack"
    status, _, whole_run = run_ttconv(sizeable_conversion, reference)
    assert status == 0
    expected = reference.read_bytes()
    outcomes = {"interrupted": 0, "completed": 0}
    for context, signum, status, err, folder in signalled_runs(sizeable_conversion, tmp_path, "out.msgpack",
                                                               whole_run, RUNS):
        assert leftovers(folder) == [], context
        if status == 0:
            assert (folder / "out.msgpack").read_bytes() == expected, context
            outcomes["completed"] += 1
        else:
            assert status == SIGNAL_STATUS[signum], context
            assert err.startswith(f"ttconv: {'interrupted' if status == 130 else 'terminated'}; "), context
            assert os.listdir(folder) == [], context
            outcomes["interrupted"] += 1
    # the instants must really be spread over the run: most interrupt it, the last ones may not
    assert outcomes["interrupted"] >= RUNS // 2, outcomes


# ---------------------------------------------------------------- checkpoint directories

def directory_bytes(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_the_temporary_directory_is_created(installed, monkeypatch, tmp_path, signum):
    signal_inside(monkeypatch, output.tempfile, "mkdtemp", signum)
    with pytest.raises((KeyboardInterrupt, interrupts.Terminated)):
        with output.atomic_directory(tmp_path / "out") as out:
            with out.file("metadata.flatbuffer") as handle:
                handle.write(b"never")
    assert os.listdir(tmp_path) == []


def test_signal_while_writing_a_directory_leaves_the_old_one(installed, tmp_path):
    old = tmp_path / "out"
    old.mkdir()
    (old / "metadata.flatbuffer").write_bytes(b"old")
    with pytest.raises(interrupts.Terminated):
        with output.atomic_directory(old) as out:
            with out.file("a.tensorbin") as handle:
                handle.write(b"part")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            with out.file("metadata.flatbuffer") as handle:
                handle.write(b"new")
            pytest.fail("the write after the signal went through")
    assert os.listdir(tmp_path) == ["out"] and directory_bytes(old) == {"metadata.flatbuffer": b"old"}


@pytest.mark.parametrize("exchange", [True, False])
def test_signal_during_the_swap_lets_the_new_directory_complete(installed, monkeypatch, tmp_path, exchange):
    if not exchange:
        monkeypatch.setattr(output, "_exchange", lambda first, second: False)
    signal_inside(monkeypatch, output.shutil, "rmtree", signal.SIGINT, after=False)
    old = tmp_path / "out"
    old.mkdir()
    (old / "metadata.flatbuffer").write_bytes(b"old")
    (old / "stale.tensorbin").write_bytes(b"stale")
    with output.atomic_directory(old) as out:
        with out.file("metadata.flatbuffer") as handle:
            handle.write(b"new")
    assert os.listdir(tmp_path) == ["out"] and directory_bytes(old) == {"metadata.flatbuffer": b"new"}
    with pytest.raises(KeyboardInterrupt):
        interrupts.check()


DIRECTORY_RUNS = 24


def test_signals_while_a_directory_is_written_leave_the_old_or_the_new_one(sizeable_conversion, tmp_path,
                                                                            ttnn_tool):
    """An existing checkpoint directory at the output is replaced only by a complete new one."""
    args = ["llama", "--no-init", "--format", "flatbuffer", "-q", *sizeable_conversion[3:]]
    reference, old = tmp_path / "reference", tmp_path / "old"
    status, _, whole_run = run_ttconv(args, reference)
    assert status == 0
    ttnn_tensors(ttnn_tool, reference, tmp_path)  # what every completed run must equal, byte for byte
    assert run_ttconv(args + ["--layout", "model"], old)[0] == 0
    expected, previous = directory_bytes(reference), directory_bytes(old)
    interrupted = 0
    for context, signum, status, err, folder in signalled_runs(args, tmp_path, "out", whole_run, DIRECTORY_RUNS,
                                                               lambda folder: shutil.copytree(old, folder / "out")):
        assert os.listdir(folder) == ["out"], context
        if status == 0:
            assert directory_bytes(folder / "out") == expected, context
        else:
            assert status == SIGNAL_STATUS[signum], context
            assert directory_bytes(folder / "out") == previous, context
            interrupted += 1
    assert interrupted >= DIRECTORY_RUNS // 2, interrupted


EXPORT_RUNS = 16


def test_signals_while_exporting_leave_nothing_or_the_whole_folder(sizeable_conversion, tmp_path):
    """to-hf builds its folder (three shards and an index here) beside the target and renames it whole."""
    tt = tmp_path / "tt.msgpack"
    assert run_ttconv(sizeable_conversion, tt)[0] == 0
    args = ["to-hf", "llama", str(tt), "--hf_model", sizeable_conversion[-1], "--max-shard-size", "15MB"]
    reference = tmp_path / "reference"
    status, _, whole_run = run_ttconv(args, reference)
    assert status == 0 and "model.safetensors.index.json" in os.listdir(reference)
    expected = directory_bytes(reference)
    interrupted = 0
    for context, signum, status, err, folder in signalled_runs(args, tmp_path, "hf", whole_run, EXPORT_RUNS):
        if status == 0:
            assert os.listdir(folder) == ["hf"] and directory_bytes(folder / "hf") == expected, context
        else:
            assert status == SIGNAL_STATUS[signum], context
            assert err.endswith(("was not written\n", "no output was written\n")), context
            assert os.listdir(folder) == [], context
            interrupted += 1
    assert interrupted >= EXPORT_RUNS // 2, interrupted


# ---------------------------------------------------------------- ttml checkpoints (DeepSeek)

def test_signals_while_a_ttml_checkpoint_is_written_leave_nothing_or_the_whole_file(tmp_path):
    import json

    from safetensors.numpy import save_file

    from ttconv.families.deepseek import DEEPSEEK

    with open(os.path.join(support.FIXTURES, "deepseek_v3-mini", "config.json")) as f:
        cfg = dict(json.load(f), hidden_size=512, moe_intermediate_size=256, intermediate_size=1024, vocab_size=4000,
                   n_routed_experts=16)
    rng = np.random.default_rng(3)
    tensors = {name: rng.standard_normal(shape, dtype=np.float32) if not name.endswith("e_score_correction_bias")
               else np.zeros(shape, dtype=np.float32)  # a nonzero router bias is refused
               for name, shape in DEEPSEEK.hf_shapes(cfg).items()}
    (tmp_path / "ckpt").mkdir()
    save_file(tensors, str(tmp_path / "ckpt" / "model.safetensors"))
    with open(tmp_path / "ckpt" / "config.json", "w") as f:
        json.dump(cfg, f)
    args = ["deepseek", "--hf_model", str(tmp_path / "ckpt"), "--ep", "4"]
    reference = tmp_path / "reference.pkl"
    status, _, whole_run = run_ttconv(args, reference)
    assert status == 0
    expected = reference.read_bytes()
    interrupted = 0
    for context, signum, status, err, folder in signalled_runs(args, tmp_path, "out.pkl", whole_run, 20):
        assert leftovers(folder) == [], context
        if status == 0:
            assert (folder / "out.pkl").read_bytes() == expected, context
        else:
            assert status == SIGNAL_STATUS[signum] and os.listdir(folder) == [], context
            interrupted += 1
    assert interrupted >= 10
