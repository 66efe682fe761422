"""ttconv's exceptions. The command line catches TtconvError and prints one line."""


class TtconvError(Exception):
    """Base class of every error a user can cause; its message is one plain line."""


class InputFileError(TtconvError):
    """A path that is missing, unreadable or not the kind of file expected."""


class TtFileError(TtconvError):
    """A tt-train msgpack file or checkpoint directory that is malformed, truncated or not what it claims."""


class CheckpointError(TtconvError):
    """A Hugging Face checkpoint (config.json, safetensors, index) that cannot be used."""


class MappingError(TtconvError):
    """Checkpoint and init file do not fit together: missing tensors, shape mismatches."""


class TokenizerError(TtconvError):
    """A tokenizer that cannot be found, read or converted."""


class OutputError(TtconvError):
    """The output cannot be written (same path as an input, full disk, permissions)."""


class BackendError(TtconvError):
    """The requested compute backend is not available."""
