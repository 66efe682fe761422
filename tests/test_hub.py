"""--hf_model as a hub id: huggingface_hub fetches from a local fake hub (HF_ENDPOINT) into a cache
it lays out itself; offline use, revisions, gated models, partial snapshots and failures."""
import os
import socket
import subprocess
import sys

import pytest

import support
from fake_hub import TOKEN, FakeHub, Repo
from ttconv.errors import CheckpointError
from ttconv.hf.hub import resolve_model

LLAMA_MINI = os.path.join(support.FIXTURES, "llama-mini")
MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
QWEN3 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trained", "qwen3")


def folder_files(folder, names):
    return {name: open(os.path.join(folder, name), "rb").read() for name in names}


@pytest.fixture(scope="module")
def hub():
    hub = FakeHub()
    files = folder_files(LLAMA_MINI, MODEL_FILES)
    tiny = hub.repos["TinyOrg/tiny-llama"] = Repo()
    tiny.main = tiny.add_commit(dict(files, **{"pytorch_model.bin": b"pickle", "README.md": b"# tiny"}), "main")
    tiny.v1 = tiny.add_commit(dict(files, **{"config.json": b'{"model_type": "llama", "v": 1}'}), "v1")
    qwen3 = hub.repos["TinyOrg/tiny-qwen3"] = Repo()
    qwen3_files = folder_files(QWEN3, ["config.json", "model.safetensors", "tokenizer.json"])
    qwen3.add_commit(qwen3_files, "main")
    qwen3.v2 = qwen3.add_commit(dict(qwen3_files, **{"README.md": b"# v2"}), "v2")
    hub.repos["Gated/llama"] = Repo(gated=True)
    hub.repos["Gated/llama"].add_commit(files, "main")
    yield hub
    hub.close()


@pytest.fixture
def env(tmp_path, hub):
    """Environment of a fresh user: an empty HF_HOME, the fake hub as endpoint, online, no token."""
    values = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    values.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_TELEMETRY="1")
    return values


def ttconv(env, *args, **extra_env):
    proc = subprocess.run([sys.executable, "-m", "ttconv", *map(str, args)], capture_output=True, text=True,
                          env=dict(env, **extra_env), timeout=120)
    return proc.returncode, proc.stderr


def resolve_in(env, *args, **extra_env):
    code = "import sys; from ttconv.hf.hub import resolve_model; print(resolve_model(*sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=dict(env, **extra_env), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def convert(env, tmp_path, model, name="out.msgpack", *more, **extra_env):
    out = tmp_path / name
    status, err = ttconv(env, "llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", out, "--hf_model", model,
                         *more, **extra_env)
    return status, err, out


def one_line_error(status, err):
    return status == 1 and err.startswith("ttconv: error: ") and err.count("\n") == 1


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    out = tmp_path_factory.mktemp("direct") / "direct.msgpack"
    subprocess.run([sys.executable, "-m", "ttconv", "llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", str(out),
                    "--hf_model", LLAMA_MINI, "-q"], check=True, capture_output=True)
    return out.read_bytes()


def test_hub_id_fetches_only_needed_files_into_the_library_cache(env, tmp_path, hub, direct):
    hub.requests.clear()
    status, err, out = convert(env, tmp_path, "TinyOrg/tiny-llama")
    assert status == 0, err
    assert out.read_bytes() == direct
    assert sorted(hub.downloads()) == sorted(MODEL_FILES)
    snapshot = tmp_path / "hf" / "hub" / "models--TinyOrg--tiny-llama" / "snapshots" / hub.repos["TinyOrg/tiny-llama"].main
    assert sorted(os.listdir(snapshot)) == sorted(MODEL_FILES)
    assert (tmp_path / "hf" / "hub" / "models--TinyOrg--tiny-llama" / "refs" / "main").read_text().strip() == \
        hub.repos["TinyOrg/tiny-llama"].main

    hub.requests.clear()
    status, err, again = convert(env, tmp_path, "TinyOrg/tiny-llama", "offline.msgpack", HF_HUB_OFFLINE="1")
    assert status == 0, err
    assert again.read_bytes() == direct and hub.requests == []


def test_qwen3_by_hub_id_and_revision_then_checked_offline(env, tmp_path, hub):
    out = tmp_path / "qwen3"
    status, err = ttconv(env, "qwen3", "--hf_model", "TinyOrg/tiny-qwen3", "--revision", "v2", "-o", out,
                         "-t", tmp_path / "tok.json", "-q")
    assert status == 0, err
    assert (out / "metadata.flatbuffer").is_file() and (tmp_path / "tok.json").is_file()
    snapshots = tmp_path / "hf" / "hub" / "models--TinyOrg--tiny-qwen3" / "snapshots"
    assert os.listdir(snapshots) == [hub.repos["TinyOrg/tiny-qwen3"].v2]
    hub.requests.clear()
    status, err = ttconv(env, "check", "qwen3", out, "--hf_model", "TinyOrg/tiny-qwen3", "--revision", "v2", "-q",
                         HF_HUB_OFFLINE="1")
    assert status == 0, err
    assert hub.requests == []


def test_hf_hub_cache_variable_is_the_library_s(env, tmp_path, direct):
    status, err, out = convert(env, tmp_path, "TinyOrg/tiny-llama", HF_HUB_CACHE=str(tmp_path / "elsewhere"))
    assert status == 0, err
    assert (tmp_path / "elsewhere" / "models--TinyOrg--tiny-llama").is_dir()
    assert not (tmp_path / "hf" / "hub").exists()


def test_revisions_by_tag_and_commit(env, hub):
    repo = hub.repos["TinyOrg/tiny-llama"]
    tagged = resolve_in(env, "TinyOrg/tiny-llama", "v1")
    assert os.path.basename(tagged) == repo.v1
    assert open(os.path.join(tagged, "config.json"), "rb").read() == repo.commits[repo.v1]["config.json"]
    assert os.path.basename(resolve_in(env, "TinyOrg/tiny-llama", repo.main)) == repo.main
    assert resolve_in(env, "TinyOrg/tiny-llama", "v1", HF_HUB_OFFLINE="1") == tagged


def test_offline_and_not_cached_says_what_to_do(env, tmp_path):
    status, err, out = convert(env, tmp_path, "TinyOrg/tiny-llama", HF_HUB_OFFLINE="1")
    assert one_line_error(status, err), err
    assert "TinyOrg/tiny-llama: not in the Hugging Face cache" in err and "HF_HUB_OFFLINE is set" in err
    assert not out.exists()


def test_gated_model_needs_a_token(env, tmp_path, direct):
    status, err, _ = convert(env, tmp_path, "Gated/llama")
    assert one_line_error(status, err), err
    assert "Gated/llama: gated model" in err and "HF_TOKEN" in err
    status, err, out = convert(env, tmp_path, "Gated/llama", HF_TOKEN=TOKEN)
    assert status == 0, err
    assert out.read_bytes() == direct


def test_unknown_revision_and_unknown_model(env, tmp_path):
    status, err, _ = convert(env, tmp_path, "TinyOrg/tiny-llama", "o", "--revision", "nope")
    assert one_line_error(status, err), err
    assert "has no revision 'nope'" in err
    status, err, _ = convert(env, tmp_path, "TinyOrg/absent")
    assert one_line_error(status, err), err
    assert "TinyOrg/absent: no such local folder, and no such model on the Hugging Face hub" in err


def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_unreachable_hub_falls_back_to_the_cache(env, tmp_path, direct):
    down = closed_port_url()
    status, err, _ = convert(env, tmp_path, "TinyOrg/tiny-llama", HF_ENDPOINT=down)
    assert one_line_error(status, err), err
    assert "not in the Hugging Face cache, and the hub could not be reached" in err
    assert convert(env, tmp_path, "TinyOrg/tiny-llama")[0] == 0
    status, err, out = convert(env, tmp_path, "TinyOrg/tiny-llama", "cached.msgpack", HF_ENDPOINT=down)
    assert status == 0, err
    assert out.read_bytes() == direct


def test_partial_snapshot_is_completed_online(env, tmp_path, hub, direct):
    fetch_one = "import huggingface_hub as h; h.hf_hub_download('TinyOrg/tiny-llama', 'config.json')"
    subprocess.run([sys.executable, "-c", fetch_one], env=env, check=True, capture_output=True)
    status, err, _ = convert(env, tmp_path, "TinyOrg/tiny-llama", HF_HUB_OFFLINE="1")
    assert one_line_error(status, err), err
    hub.requests.clear()
    status, err, out = convert(env, tmp_path, "TinyOrg/tiny-llama", "completed.msgpack")
    assert status == 0, err
    assert out.read_bytes() == direct
    assert "config.json" not in hub.downloads() and "model.safetensors" in hub.downloads()


def test_local_paths_are_not_hub_ids(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        resolve_model("./missing/model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model(str(tmp_path / "file"))
