"""SIGINT and SIGTERM at any instant: no temporary file, no output, one line, exit 130/143."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import support
from ttconv import interrupts, output

SIGNAL_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".partial"))


@pytest.fixture
def installed():
    previous = interrupts.install()
    yield
    interrupts.restore(previous)


def test_held_delivers_a_signal_when_the_block_ends(installed):
    reached_end_of_block = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # a handler in force would have raised by now
            reached_end_of_block = True
    assert reached_end_of_block


def test_held_delivers_sigterm_as_terminated(installed):
    with pytest.raises(interrupts.Terminated):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)


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


@pytest.mark.parametrize("where", ["fsync", "replace_before"])
def test_signal_before_the_rename_leaves_nothing(installed, monkeypatch, tmp_path, where):
    name = "fsync" if where == "fsync" else "replace"
    signal_inside(monkeypatch, output.os, name, signal.SIGINT, after=where == "fsync")
    (tmp_path / "out").write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with output.atomic_output(tmp_path / "out") as out:
            out.write(b"new")
    if where == "fsync":
        assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_bytes() == b"previous"
    else:
        # the signal arrived inside the held rename: it is delivered once the file is in place
        assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out").read_bytes() == b"new"


def test_signal_during_the_rename_counts_as_completed(cli, monkeypatch, tmp_path):
    signal_inside(monkeypatch, output.os, "replace", signal.SIGTERM)
    out = tmp_path / "out.msgpack"
    mini = os.path.join(support.FIXTURES, "llama-mini")
    status, _, err = cli("llama", "-i", f"{mini}/init.msgpack", "--hf_model", mini, "-o", out)
    assert status == 0 and err == f"ttconv: wrote {out}; a signal arrived as it was completed\n"
    assert out.stat().st_size > 0 and leftovers(tmp_path) == []


def test_signal_before_an_import_completes_is_not_an_import_error(installed):
    sys.modules.pop("json.tool", None)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.held():
            os.kill(os.getpid(), signal.SIGINT)
            interrupts.import_held("json.tool")
    assert "json.tool" in sys.modules


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


def test_signals_at_fifty_instants_leave_no_trace(sizeable_conversion, tmp_path):
    reference = tmp_path / "reference.msgpack"
    status, _, whole_run = run_ttconv(sizeable_conversion, reference)
    assert status == 0
    expected = reference.read_bytes()

    def one(k):
        folder = tmp_path / f"run{k}"
        folder.mkdir()
        signum = signal.SIGINT if k % 2 == 0 else signal.SIGTERM
        delay = whole_run * 1.1 * k / (RUNS - 1)
        status, err, _ = run_ttconv(sizeable_conversion, folder / "out.msgpack", signum, delay)
        return k, delay, signum, status, err, folder

    outcomes = {"interrupted": 0, "completed": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for k, delay, signum, status, err, folder in pool.map(one, range(RUNS)):
            context = f"run {k}: {signum.name} {delay * 1000:.0f} ms after the handlers, exit {status}: {err!r}"
            assert "Traceback" not in err and err.count("\n") == 1, context
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
