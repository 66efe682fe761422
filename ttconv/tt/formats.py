"""The one place that tells the on-disk formats apart: msgpack files, checkpoint directories and
ttml (Python-side) pickles, which are read only."""
import os

from ..errors import TtFileError
from ..output import check_directory_target, check_file_target
from .lora import LoraMerged
from .tensorbin import BFLOAT16
from .ttdir import TtDir, is_checkpoint_dir
from .ttdir_out import DirWriter, directory_output
from .ttfile import TtFile
from .ttfile_out import MsgpackWriter, msgpack_output
from .ttml import TtmlFile, is_ttml_file
from .ttml_adapters import TtmlAdapterFile, is_adapter_file

FORMATS = ("msgpack", "flatbuffer")


def open_tt(path, ttml_models, on_bytes=None, assume_float32=False, tp=None, base=None):
    """A reader for a tt-train msgpack file (TtFile), checkpoint directory (TtDir: the directory or
    its metadata.flatbuffer), ttml pickle (TtmlFile, told by its content, holding one of
    ttml_models: {root class name: Family}) or adapter file (TtmlAdapterFile: its LoRA adapters
    only; base() gives the model's tensors it stands for, None when the command has no original
    model to take them from). on_bytes(n) reports progress while a msgpack file is indexed.
    assume_float32: see TtFile (for readers that check every value they read, through row sources).
    tp: the tensor-parallel degree a ttml file was gathered from (None: 1); other formats refuse it."""
    if is_checkpoint_dir(path):
        reader = TtDir(path)
    elif is_ttml_file(path):
        return TtmlFile(path, ttml_models, tp or 1)
    elif is_adapter_file(path):
        if base is None:
            raise TtFileError(f"{path}: is a tt-train LoRA adapter file (adapters only); give --hf_model, the "
                              "model it was trained on")
        reader = TtmlAdapterFile(path, ttml_models, base())
    else:
        reader = TtFile(path, on_bytes, assume_float32)
    if tp not in (None, 1):
        kind = {TtDir: "checkpoint directory", TtmlAdapterFile: "LoRA adapter file"}.get(type(reader), "msgpack file")
        raise TtFileError(f"{path}: --tp applies to tt-train's Python-side (ttml) checkpoints; this is a {kind}, "
                          "whose tensors are stored whole")
    return reader


def value_bytes(tt):
    """Bytes a converted value takes when tt is written in its own format (bfloat16, or msgpack float32)."""
    return DirWriter.value_bytes if isinstance(tt, TtDir) else MsgpackWriter.value_bytes


def weights_in_bfloat16(tt, params):
    """True when every one of a reader's weight tensors (params) is stored as bfloat16 (a directory
    as tt-train saves it); msgpack files hold float32."""
    if isinstance(tt, LoraMerged):  # merged weights keep their base weights' precision
        return weights_in_bfloat16(tt.reader, {n: tt.base[n] for n in params})
    if isinstance(tt, TtmlFile):
        return tt.stores_bfloat16(params)
    return isinstance(tt, TtDir) and all(p.data.header.data_type == BFLOAT16 for p in params.values())


def conversion_output(tt, path, inputs=()):
    """The context manager that writes tt converted, in tt's own format, atomically to path: it yields
    the writer conversion.write_converted drives."""
    if isinstance(tt, TtDir):
        return directory_output(tt, path, inputs)
    return msgpack_output(tt, path, inputs)


def check_output(tt, path, inputs=()):
    """Refuse (OutputError) an output path that tt's format cannot be written to, before any work."""
    if isinstance(tt, TtDir):
        check_directory_target(path, inputs)
    else:
        check_file_target(path, inputs)


def output_size(path):
    """Bytes of a written file, or of every file of a written directory."""
    if os.path.isdir(path):
        return sum(entry.stat().st_size for entry in os.scandir(path) if entry.is_file())
    return os.path.getsize(path)
