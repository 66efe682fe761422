"""Resolve --hf_model: a local folder, or a Hugging Face hub id through huggingface_hub.

huggingface_hub owns the cache (HF_HOME, HF_HUB_CACHE), revisions, HF_HUB_OFFLINE,
HF_TOKEN and partially cached snapshots, exactly as in the Hugging Face tools; ttconv
asks only for the files it reads and turns the library's errors into one line.
"""
import os
import re

from .. import interrupts
from ..errors import CheckpointError

NEEDED_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(hf_model, revision=None):
    """Local folder holding the model's files: hf_model itself, or the hub snapshot (cached or fetched)."""
    if os.path.isdir(hf_model):
        return hf_model
    if os.path.exists(hf_model):
        raise CheckpointError(f"{hf_model}: is a file; --hf_model takes a model folder or a hub id")
    if not HUB_ID.match(hf_model) or hf_model.startswith((".", "/")):
        raise CheckpointError(f"{hf_model}: no such directory, and not a Hugging Face hub id")
    hub = interrupts.import_held("huggingface_hub")
    errors = interrupts.import_held("huggingface_hub.utils")  # the exceptions live here in every supported version
    constants = interrupts.import_held("huggingface_hub.constants")  # not an attribute of the package in 1.x and later
    name = hf_model + (f" (revision {revision})" if revision else "")
    try:
        with interrupts.immediate():  # a download has no safe points, and nothing of ours to clean up
            return hub.snapshot_download(hf_model, revision=revision, allow_patterns=NEEDED_FILES)
    except errors.GatedRepoError:
        raise CheckpointError(
            f"{name}: gated model; accept its terms on the Hugging Face hub, then give a token that has "
            "access (HF_TOKEN, or log in with the Hugging Face CLI)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{name}: no such local folder, and no such model on the Hugging Face hub "
            "(a private model needs a token: HF_TOKEN, or log in with the Hugging Face CLI)"
        ) from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{name}: the model has no revision {revision!r} on the Hugging Face hub") from None
    except errors.LocalEntryNotFoundError as exc:
        if constants.HF_HUB_OFFLINE or _offline_in_environment():
            raise CheckpointError(
                f"{name}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; "
                "download it where there is network (`hf download`) or pass a local folder"
            ) from None
        raise CheckpointError(
            f"{name}: not in the Hugging Face cache, and the hub could not be reached ({_first_line(exc)}); "
            "check the network or pass a local folder"
        ) from None
    except errors.HfHubHTTPError as exc:
        raise CheckpointError(f"{name}: the Hugging Face hub refused the request ({_first_line(exc)})") from None
    except errors.HFValidationError as exc:
        raise CheckpointError(f"{hf_model}: no such directory, and not a valid hub id ({_first_line(exc)})") from None
    except Exception as exc:  # the HTTP client's own errors (proxy, TLS, ...) have no common base class
        raise CheckpointError(f"{name}: could not fetch from the Hugging Face hub ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None


def _offline_in_environment():
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, when it is first imported)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _first_line(exc):
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
