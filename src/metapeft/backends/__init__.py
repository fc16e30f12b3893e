"""Backends: the frameworks that fine-tune causal LMs (torch + peft, MLX + mlx-lm) behind one interface."""

from .._errors import MetapeftError
from ._base import DEFAULT_MAX_LENGTH, Backend, CausalResult, Watch
from ._mlx import MLXBackend
from ._run import is_causal_model, load_for_causal
from ._torch import TorchBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TorchBackend, MLXBackend)}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (one-line ``MetapeftError`` for an unknown one)."""
    if name not in BACKENDS:
        raise MetapeftError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return BACKENDS[name]()


__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_LENGTH",
    "Backend",
    "CausalResult",
    "MLXBackend",
    "TorchBackend",
    "get_backend",
    "is_causal_model",
    "load_for_causal",
    "Watch",
]
