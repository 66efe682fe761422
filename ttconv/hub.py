"""Resolve --hf_model: a local directory, or a hub id from the Hugging Face cache (or download)."""
import os
import re

from .errors import CheckpointError

NEEDED_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_cache_dir():
    """The Hugging Face hub cache folder (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def offline():
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_snapshot(repo_id, revision=None):
    """The cached snapshot folder of repo_id at revision (default main), or None."""
    repo_dir = os.path.join(hub_cache_dir(), "models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    if COMMIT.match(revision):
        commit = revision
    else:
        try:
            with open(os.path.join(repo_dir, "refs", revision), encoding="utf-8") as ref:
                commit = ref.read().strip()
        except OSError:
            return None
    snapshot = os.path.join(repo_dir, "snapshots", commit)
    return snapshot if os.path.isfile(os.path.join(snapshot, "config.json")) else None


def resolve_model(hf_model, revision=None):
    """Local folder holding the model's files; downloads only when the cache lacks them."""
    if os.path.isdir(hf_model):
        return hf_model
    if os.path.exists(hf_model):
        raise CheckpointError(f"{hf_model}: is a file; --hf_model takes a model folder or a hub id")
    if not HUB_ID.match(hf_model) or hf_model.startswith((".", "/")):
        raise CheckpointError(f"{hf_model}: no such directory, and not a Hugging Face hub id")
    snapshot = cached_snapshot(hf_model, revision)
    if snapshot:
        return snapshot
    missing = f"{hf_model}" + (f" at revision {revision}" if revision else "") + " is not a local folder, and"
    if offline():
        raise CheckpointError(
            f"{missing} not in the Hugging Face cache ({hub_cache_dir()}) while HF_HUB_OFFLINE is set; "
            "download it where there is network (huggingface-cli download) or pass a local folder"
        )
    return _download(hf_model, revision, missing)


def _download(repo_id, revision, missing):
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{missing} not cached, and huggingface_hub is not installed to fetch it") from None
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=NEEDED_FILES,
                                 cache_dir=hub_cache_dir())
    except Exception as exc:  # huggingface_hub raises many types; all mean "could not fetch"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{missing} not in the Hugging Face cache, and could not be downloaded ({reason}); "
            "check the name and network, or pass a local folder"
        ) from None
