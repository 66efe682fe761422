"""A command imports only what it uses: small commands never load jax or ml_dtypes (a plain
sys.modules check in a fresh interpreter, not a timing), and numpy's BLAS starts no threads for
commands that never multiply matrices."""
import json
import os
import subprocess
import sys

import pytest

from ttconv.__main__ import limit_blas_threads

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "llama-mini")
HEAVY = ("jax", "jaxlib", "ml_dtypes")

# Runs the command as `python -m ttconv` does, then reports which modules it loaded and how many
# threads the process has.
PROBE = """
import json, os, sys
from ttconv.__main__ import run
sys.argv = ["ttconv"] + json.loads(sys.argv[1])
try:
    status = run()
except SystemExit as exc:  # argparse's --version
    status = exc.code
report = {"status": status, "modules": sorted(sys.modules), "threads": len(os.listdir("/proc/self/task"))}
print(json.dumps(report), file=sys.stderr)
"""


def probe(argv, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("TTCONV_BACKEND", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in argv])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["status"] == 0, done.stderr
    return report


def loaded_modules(argv, cwd):
    return set(probe(argv, cwd)["modules"])


def heavy_in(modules):
    return sorted(m for m in modules if m.split(".", 1)[0] in HEAVY)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("startup")
    modules = loaded_modules(["llama", "--no-init", "--format", "flatbuffer", "--hf_model", EXAMPLE,
                              "-o", out / "llama-mini", "-t", out / "tokenizer.json",
                              "--dump-config", out / "llama-mini.yaml"], out)
    return out, modules


def test_version_loads_neither_jax_nor_ml_dtypes(tmp_path):
    modules = loaded_modules(["--version"], tmp_path)
    assert "ttconv.kernels" in modules and heavy_in(modules) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="counts threads in /proc; OpenBLAS starts none on one core anyway")
def test_version_leaves_numpy_blas_without_threads(tmp_path):
    # OpenBLAS would start one thread per further core at numpy's import, spinning ~0.08 s of processor time
    assert probe(["--version"], tmp_path)["threads"] == 1


def test_blas_gets_one_thread_unless_the_command_multiplies_matrices():
    environ = {}
    limit_blas_threads(["--quiet", "gpt2", "--hf_model", "check"], environ)
    assert environ == {"OPENBLAS_NUM_THREADS": "1"}
    environ = {}
    limit_blas_threads(["--verbose", "check", "llama", "run.msgpack"], environ)
    assert environ == {}
    environ = {}
    limit_blas_threads(["to-hf", "llama", "lora.pkl", "--merge-lora", "-o", "merged"], environ)
    assert environ == {}
    environ = {"OPENBLAS_NUM_THREADS": "4"}  # the user's setting wins
    limit_blas_threads(["inspect", "run.msgpack"], environ)
    assert environ == {"OPENBLAS_NUM_THREADS": "4"}


def test_a_small_conversion_loads_neither(example_dir):
    out, modules = example_dir
    assert (out / "llama-mini" / "metadata.flatbuffer").is_file()
    assert "ttconv.conversion" in modules and heavy_in(modules) == []


def test_a_conversion_from_a_local_folder_loads_no_hub_library(example_dir):
    # huggingface_hub resolves hub ids and splits an export's shards; a local folder needs neither
    out, modules = example_dir
    assert (out / "tokenizer.json").is_file()
    assert sorted(m for m in modules if m.split(".", 1)[0] == "huggingface_hub") == []


def test_a_msgpack_conversion_loads_neither(tmp_path):
    modules = loaded_modules(["llama", "-i", os.path.join(EXAMPLE, "init.msgpack"), "--hf_model", EXAMPLE,
                              "-o", tmp_path / "out.msgpack"], tmp_path)
    assert (tmp_path / "out.msgpack").stat().st_size > 0 and heavy_in(modules) == []


def test_inspect_loads_neither(example_dir):
    out, _ = example_dir
    modules = loaded_modules(["inspect", out / "llama-mini"], out)
    assert "ttconv.inspection" in modules and heavy_in(modules) == []


def test_the_probe_sees_jax_where_a_command_uses_it(example_dir):
    # check runs the forward passes in jax.numpy: the probe must report it, or the tests above prove nothing
    out, _ = example_dir
    modules = loaded_modules(["check", "llama", out / "llama-mini", "--hf_model", EXAMPLE, "--tokens", "8"], out)
    assert "jax" in modules
