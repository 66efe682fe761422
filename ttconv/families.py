"""The model families ttconv converts, by the name its commands and functions take."""

FAMILIES = ("llama", "qwen3", "gpt2")
FAMILY_NAMES = {"llama": "Llama", "qwen3": "Qwen3", "gpt2": "GPT-2"}
# Families tt-train has only since it saves checkpoint directories: no msgpack for them.
DIRECTORY_ONLY = ("qwen3",)
# RoPE models with tt-train's adjacent-pair rotation: q/k rows are permuted on the way in.
ROPE_FAMILIES = ("llama", "qwen3")
