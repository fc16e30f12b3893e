"""Base models from other formats: a llama2.c checkpoint as a Hugging Face (and mlx-lm) Llama folder."""

from ._llama2c import import_llama2c, read_header

__all__ = ["import_llama2c", "read_header"]
