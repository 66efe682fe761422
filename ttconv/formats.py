"""The one place that tells the two on-disk formats apart: msgpack files and checkpoint directories."""
from .ttdir import TtDir, is_checkpoint_dir
from .ttfile import TtFile


def open_tt(path, on_bytes=None):
    """A reader for a tt-train msgpack file (TtFile) or checkpoint directory (TtDir: the directory or
    its metadata.flatbuffer); on_bytes(n) reports progress while a msgpack file is indexed."""
    if is_checkpoint_dir(path):
        return TtDir(path)
    return TtFile(path, on_bytes)
