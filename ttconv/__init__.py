"""ttconv: convert Hugging Face Llama, Qwen3 and GPT-2 checkpoints into tt-train msgpack weight files
and checkpoint directories (Qwen3: directories only), DeepSeek into ttml (tt-train Python-side)
checkpoints, and back.

Python API (the command line uses the same functions):

>>> import ttconv
>>> ttconv.convert("llama", "examples/llama-mini", "out/llama", format="flatbuffer")  # doctest: +SKIP
>>> ttconv.convert("qwen3", "Qwen/Qwen3-0.6B", "out/qwen3")                         # doctest: +SKIP
>>> ttconv.convert_llama("examples/llama-mini/init.msgpack", "examples/llama-mini",
...                      "out/llama.msgpack")                       # doctest: +SKIP
>>> ttconv.convert_gpt2("init.msgpack", "gpt2", "out/gpt2.msgpack")  # doctest: +SKIP
>>> ttconv.convert_ttml("deepseek", "deepseek-ai/DeepSeek-V2-Lite", "out/v2lite.pkl", ep=8)  # doctest: +SKIP
>>> ttconv.export_tokenizer("llama", "examples/llama-mini", "out/tokenizer.json")  # doctest: +SKIP
>>> ttconv.to_hf("llama", "out/llama.msgpack", "examples/llama-mini", "out/hf")     # doctest: +SKIP
"""
__version__ = "0.1.0"

__all__ = ["convert", "convert_ttml", "convert_llama", "convert_gpt2", "export_tokenizer", "to_hf", "write_config", "check", "TtconvError", "__version__"]

_API = {
    "convert": "api", "convert_ttml": "api", "convert_llama": "api", "convert_gpt2": "api", "to_hf": "api", "write_config": "api", "check": "api",
    "export_tokenizer": "api", "TtconvError": "errors",
}


def version_text():
    """What `ttconv --version` prints: the version and the backend that runs the hot loops."""
    from . import kernels

    reason = f"; {kernels.FALLBACK_REASON}" if kernels.FALLBACK_REASON else ""
    return f"ttconv {__version__} (backend: {kernels.BACKEND}{reason})"


def __getattr__(name):
    # Imported on first use so that `ttconv --help` and error reporting start fast.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module 'ttconv' has no attribute {name!r}")
