"""A command imports only what it uses: small commands never load jax or ml_dtypes (a plain
sys.modules check in a fresh interpreter, not a timing)."""
import json
import os
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "llama-mini")
HEAVY = ("jax", "jaxlib", "ml_dtypes")

# Runs the command as `python -m ttconv` does, then reports which modules it loaded.
PROBE = """
import json, sys
from ttconv.__main__ import run
sys.argv = ["ttconv"] + json.loads(sys.argv[1])
try:
    status = run()
except SystemExit as exc:  # argparse's --version
    status = exc.code
print(json.dumps({"status": status, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def loaded_modules(argv, cwd):
    env = {k: v for k, v in os.environ.items() if k != "TTCONV_BACKEND"}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps([str(a) for a in argv])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["status"] == 0, done.stderr
    return set(report["modules"])


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
