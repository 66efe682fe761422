"""--hf_model as a hub id, resolved from a fake Hugging Face cache without network."""
import hashlib
import os

import pytest

import support
from ttconv.errors import CheckpointError
from ttconv.hub import resolve_model

LLAMA_MINI = os.path.join(support.FIXTURES, "llama-mini")
FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def fake_cache(root, repo_id, revisions):
    """models--ORG--NAME with blobs/, refs/NAME and snapshots/COMMIT/ symlinks, as huggingface_hub lays out."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    commits = {}
    for ref, source in revisions.items():
        commit = hashlib.sha1(ref.encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name in FILES:
            data = open(os.path.join(source, name), "rb").read()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs" / ref).write_text(commit)
        commits[ref] = commit
    return commits


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf" / "hub"


def test_hub_id_converts_from_cache(cli, tmp_path, hf_home):
    fake_cache(hf_home, "TinyOrg/tiny-llama", {"main": LLAMA_MINI})
    out = tmp_path / "out.msgpack"
    status, _, err = cli("llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", out, "--hf_model", "TinyOrg/tiny-llama")
    assert status == 0, err
    direct = tmp_path / "direct.msgpack"
    assert cli("llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", direct, "--hf_model", LLAMA_MINI)[0] == 0
    assert out.read_bytes() == direct.read_bytes()


def test_revision_picks_another_snapshot(tmp_path, hf_home, fixture_copy):
    other = fixture_copy("gpt2-mini")
    commits = fake_cache(hf_home, "org/model", {"main": LLAMA_MINI, "v2": str(other)})
    assert resolve_model("org/model").endswith(commits["main"])
    assert resolve_model("org/model", "v2").endswith(commits["v2"])
    assert resolve_model("org/model", commits["v2"]).endswith(commits["v2"])


def test_hf_hub_cache_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commits = fake_cache(tmp_path / "cache", "a/b", {"main": LLAMA_MINI})
    assert resolve_model("a/b").endswith(commits["main"])


def test_offline_and_not_cached_says_what_to_do(cli, tmp_path, hf_home):
    status, _, err = cli("llama", "-i", f"{LLAMA_MINI}/init.msgpack", "-o", tmp_path / "o", "--hf_model", "org/absent")
    assert status == 1 and err.count("\n") == 1
    assert "org/absent is not a local folder, and not in the Hugging Face cache" in err and "HF_HUB_OFFLINE" in err


def test_unknown_revision_offline(hf_home):
    fake_cache(hf_home, "org/model", {"main": LLAMA_MINI})
    with pytest.raises(CheckpointError, match="at revision nope is not a local folder, and not in the Hugging Face cache"):
        resolve_model("org/model", "nope")


def test_local_paths_are_not_hub_ids(tmp_path, hf_home):
    with pytest.raises(CheckpointError, match="no such directory"):
        resolve_model("./missing/model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_model(str(tmp_path / "file"))
