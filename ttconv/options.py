"""Each command's options as one frozen, keyword-only object: the API builds it, the drivers read it.

A new option is added here (with its default) and where the API and the command line take it;
the drivers receive the whole object, never long chains of positional arguments. `family` is
the Family object (ttconv.families) the command works on.
"""
from dataclasses import dataclass
from typing import Optional

from .tt.training import DEFAULT_LEARNING_RATE, DEFAULT_MAX_STEPS

EXPORT_DTYPES = ("auto", "f32", "bf16", "f16")  # to-hf --dtype: the file's own precision, or one of these

@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    """A Hugging Face checkpoint -> tt-train conversion (ttconv.convert)."""

    family: object
    hf_model: str
    output: str
    init: Optional[str] = None            # what to fill; None builds the output from config.json
    format: Optional[str] = None          # msgpack or flatbuffer when built; None: the input's, else the family's
    layout: str = "training"
    scheduler: str = "identity"
    learning_rate: float = DEFAULT_LEARNING_RATE
    max_steps: int = DEFAULT_MAX_STEPS
    vocab_multiple: int = 32
    meta_style: object = False            # True, False or "auto"
    text_path: Optional[str] = None
    keep_optimizer_state: bool = False
    prefix: Optional[str] = None
    revision: Optional[str] = None
    dry_run: bool = False
    quiet: bool = True

    @property
    def build(self):
        """The keywords of ttbuild.build_file / build_dir."""
        return {"layout": self.layout, "scheduler": self.scheduler, "learning_rate": self.learning_rate,
                "vocab_multiple": self.vocab_multiple, "max_steps": self.max_steps}


@dataclass(frozen=True, kw_only=True)
class TtmlConvertOptions:
    """A Hugging Face checkpoint -> ttml checkpoint conversion (ttconv.convert_ttml)."""

    family: object
    hf_model: str
    output: str
    dtype: str = "bf16"
    layout: str = "model"
    tp: int = 1
    ep: Optional[int] = None
    learning_rate: float = DEFAULT_LEARNING_RATE
    max_sequence_length: Optional[int] = None  # None: config.json's max_position_embeddings
    allow_lossy: bool = False  # warn of what tt-train computes otherwise instead of refusing it
    revision: Optional[str] = None
    dry_run: bool = False
    quiet: bool = True


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """A tt-train file -> Hugging Face checkpoint or PEFT adapter export (ttconv.to_hf)."""

    family: object
    tt_path: str
    hf_model: Optional[str]               # None: config.json from a ttml header
    output_dir: str
    dtype: str = "auto"
    meta_style: bool = False
    revision: Optional[str] = None
    quiet: bool = True
    max_shard_size: object = "5GB"
    tp: Optional[int] = None
    overrides: tuple = ()
    lora_alpha: Optional[float] = None
    rslora: bool = False
    merge_lora: bool = False


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """A forward-pass comparison of a tt-train file with its checkpoint (ttconv.check)."""

    family: object
    tt_path: str
    hf_model: str
    text_path: Optional[str] = None
    tokens: int = 128
    revision: Optional[str] = None
    quiet: bool = True
    tp: Optional[int] = None
    lora_alpha: Optional[float] = None
    rslora: bool = False
