"""Hugging Face's side: safetensors checkpoints (checkpoint), config.json in tt-train's terms (hfconfig),
hub ids (hub) and tokenizers (tokenizer)."""
