"""The classifier: encoder (plain, or wrapped by peft) → masked mean pooling → linear head.

Mean pooling, not the [CLS] pooler: sentence encoders such as all-MiniLM-L6-v2 were trained for it, and a
[CLS] head handicaps them badly (head-only ~59% on sst2 in our pilot). The head lives outside the peft model,
so the adapter directory is standard peft format (``PeftModel.from_pretrained(AutoModel…, path)`` reloads
it); the head and label mapping are saved beside it and :func:`load_classifier` rebuilds the whole model.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .._backbone import _first_line, load_encoder, load_tokenizer
from .._errors import MetapeftError

FORMAT_VERSION = 1
META_FILE = "metapeft.json"
HEAD_FILE = "head.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_FILE = "adapter_model.safetensors"
ENCODER_DIR = "encoder"
_KINDS = ("peft", "full", "head")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_FIX = "retrain, or restore the folder from a copy"


class TextClassifier(nn.Module):
    """Encoder → masked mean pooling (→ L2 normalisation with ``normalize``: a cosine classifier, as the few-shot
    prototypes are) → linear head."""

    def __init__(
        self,
        encoder: nn.Module,
        num_labels: int,
        hidden_size: int,
        prompt_learning: bool = False,
        normalize: bool = False,
    ):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_labels)
        self.prompt_learning = prompt_learning
        self.normalize = normalize

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask, token_type_ids))

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """The pooled sentence embeddings the head reads."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and not self.prompt_learning:  # peft's prompt learning ignores them anyway
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state
        mask = attention_mask
        if hidden.shape[1] > mask.shape[1]:  # prompt tuning / P-tuning prepend virtual tokens to the sequence
            extra = mask.new_ones(mask.shape[0], hidden.shape[1] - mask.shape[1])
            mask = torch.cat([extra, mask], dim=1)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


@dataclass
class SavedClassifier:
    """What :func:`load_classifier` returns: a ready model plus what is needed to feed it."""

    model: TextClassifier
    tokenizer: object
    label_names: list[str]
    max_length: int
    meta: dict

    @torch.inference_mode()
    def predict_logits(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> torch.Tensor:
        self.model.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[i : i + batch_size],
                pairs[i : i + batch_size] if pairs else None,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            device = next(self.model.parameters()).device
            out.append(self.model(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
        return torch.cat(out)

    def predict(self, texts: list[str], pairs: list[str] | None = None) -> list[str]:
        return [self.label_names[i] for i in self.predict_logits(texts, pairs).argmax(-1).tolist()]


def save_classifier(model: TextClassifier, path: Path, *, kind: str, meta: dict) -> int:
    """Write the adapter (peft format), full encoder (full fine-tuning) or nothing (head-only), plus the head
    and ``metapeft.json``. Returns the bytes written for the trained parameters."""
    path.mkdir(parents=True, exist_ok=True)
    written = [path / HEAD_FILE]
    if kind == "peft":
        model.encoder.save_pretrained(path)
        written += [path / ADAPTER_CONFIG_FILE, path / ADAPTER_FILE]
        if meta.get(
            "switches"
        ):  # the adapter sits on an encoder whose weights earlier methods changed: it is saved too
            model.encoder.get_base_model().save_pretrained(path / ENCODER_DIR, safe_serialization=True)
            written += [f for f in (path / ENCODER_DIR).rglob("*") if f.is_file()]
    elif kind == "full":
        model.encoder.save_pretrained(path / ENCODER_DIR, safe_serialization=True)
        written += [f for f in (path / ENCODER_DIR).rglob("*") if f.is_file()]
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(path / HEAD_FILE))
    (path / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, "kind": kind, **meta}, indent=2))
    return sum(f.stat().st_size for f in written if f.exists())


def load_classifier(path: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> SavedClassifier:
    """Rebuild a classifier saved by ``metapeft train`` (safetensors only: nothing is unpickled).

    Every file is checked before it is used: a missing, truncated or malformed one is named in a one-line
    :class:`MetapeftError` rather than surfacing as a library's error."""
    path = Path(path).expanduser()
    meta = _read_meta(path)
    base, kind = meta["base_model"], meta["kind"]
    head_shapes = _safetensors_shapes(path / HEAD_FILE)
    if kind == "peft":
        if not isinstance(_read_json(path / ADAPTER_CONFIG_FILE).get("peft_type"), str):
            raise _damaged(path / ADAPTER_CONFIG_FILE, "lacks peft_type: it is not a peft adapter config")
        _safetensors_shapes(path / ADAPTER_FILE)
    own_encoder = kind == "full" or bool(meta.get("switches"))  # a switched run's adapter sits on its saved encoder
    if own_encoder:
        for file in _encoder_weight_files(path / ENCODER_DIR):
            _safetensors_shapes(file)
    num_labels, hidden = _head_size(path / HEAD_FILE, head_shapes)
    labels = meta.get("label_names")
    if labels is not None and len(labels) != num_labels:
        problem = f"lists {len(labels)} label names but {HEAD_FILE} has {num_labels} outputs (mixed runs?)"
        raise _damaged(path / META_FILE, problem)

    if own_encoder:
        encoder = _load_full_encoder(path / ENCODER_DIR, trust_remote_code)
    else:
        encoder = load_encoder(base, trust_remote_code)
    expected = _hidden_size(encoder.config)
    if expected and expected != hidden:
        problem = f"expects {hidden}-dimensional embeddings but the encoder gives {expected} (mixed runs?)"
        raise _damaged(path / HEAD_FILE, problem)
    if kind == "peft":
        encoder = _load_adapter(encoder, path, base)
    model = TextClassifier(
        encoder,
        num_labels,
        hidden,
        prompt_learning=meta.get("prompt_learning", False),
        normalize=meta.get("normalize", False),
    )
    model.head.load_state_dict(load_file(str(path / HEAD_FILE)))
    model.to(device).eval()
    if labels is None:  # folders an older `metapeft train` wrote lack them (a bug)
        labels = [str(i) for i in range(num_labels)]
        warnings.warn(
            f"{path} has no label names (saved by an older metapeft): predict returns class indices "
            f"0..{num_labels - 1} in sorted label order",
            stacklevel=2,
        )
    return SavedClassifier(model, load_tokenizer(base, trust_remote_code), labels, meta["max_length"], meta)


def _damaged(file: Path, problem: str) -> MetapeftError:
    return MetapeftError(f"{file} {problem}; {_FIX}")


def _read_json(file: Path) -> dict:
    """The JSON object in ``file``, or a one-line error naming it."""
    if not file.is_file():
        raise _damaged(file, "is missing")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _damaged(file, f"is not valid JSON: truncated or corrupt ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise _damaged(file, f"holds a JSON {type(data).__name__}, not an object")
    return data


def _read_meta(path: Path) -> dict:
    """``metapeft.json`` with the keys loading needs checked (``label_names`` may be absent: older folders)."""
    if not path.is_dir():
        what = "a file, not a folder" if path.exists() else "missing"
        raise MetapeftError(f"{path} is {what}; give the folder `metapeft train` wrote")
    file = path / META_FILE
    if not file.exists():
        raise MetapeftError(
            f"{path} is not a metapeft output directory (no {META_FILE}); give the folder `metapeft train` wrote"
        )
    meta = _read_json(file)
    missing = [key for key in ("format_version", "kind", "base_model", "max_length") if key not in meta]
    if missing:
        raise _damaged(file, f"lacks {', '.join(missing)}")

    def bad(key: str, expected: str) -> MetapeftError:
        return _damaged(file, f"has {key} = {_short(meta[key])}, expected {expected}")

    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    version = meta["format_version"]
    if not is_int(version) or version < 1:
        raise bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise MetapeftError(
            f"{file} was written by a newer metapeft (format {version}, this one reads {FORMAT_VERSION}); upgrade it"
        )
    if meta["kind"] not in _KINDS:
        raise bad("kind", " or ".join(map(repr, _KINDS)))
    if meta["base_model"] is not None and not (isinstance(meta["base_model"], str) and meta["base_model"]):
        raise bad("base_model", "a model name or path")
    if not is_int(meta["max_length"]) or meta["max_length"] < 1:
        raise bad("max_length", "a positive integer")
    labels = meta.get("label_names")
    if labels is not None and not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise bad("label_names", "a list of strings")
    for key in ("prompt_learning", "normalize"):
        if not isinstance(meta.get(key, False), bool):
            raise bad(key, "true or false")
    if not isinstance(meta.get("switches", []), list):
        raise bad("switches", "a list")
    return meta


def _safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """Tensor shapes in ``file``, read from its header (which safetensors checks against the file's size)."""
    if not file.is_file():
        pickled = sorted(p.name for p in file.parent.glob("*") if p.suffix in _PICKLE_SUFFIXES)
        if pickled:
            raise MetapeftError(
                f"{file} is missing and {file.parent} holds only pickle weights ({', '.join(pickled)}), which "
                "metapeft never loads (unpickling can run code); retrain, or re-save the weights as safetensors"
            )
        raise _damaged(file, "is missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        problem = f"is not a readable safetensors file: truncated or corrupt ({_first_line(exc)})"
        raise _damaged(file, problem) from None
    if not shapes:
        raise _damaged(file, "holds no tensors")
    return shapes


def _head_size(file: Path, shapes: dict[str, list[int]]) -> tuple[int, int]:
    """(labels, hidden size) of the linear head in ``file``."""
    weight, bias = shapes.get("weight"), shapes.get("bias")
    if set(shapes) != {"weight", "bias"} or len(weight) != 2 or bias != weight[:1] or 0 in weight:
        got = ", ".join(f"{k} {v}" for k, v in sorted(shapes.items()))
        problem = f"does not hold a linear head (weight [labels, hidden] and bias [labels]; found {_short(got)})"
        raise _damaged(file, problem)
    return weight[0], weight[1]


def _encoder_weight_files(encoder_dir: Path) -> list[Path]:
    """The safetensors files of a fully fine-tuned encoder (one file, or the shards its index lists)."""
    if not encoder_dir.is_dir():
        raise _damaged(encoder_dir, "is missing (a full fine-tuning run keeps its encoder there)")
    _read_json(encoder_dir / "config.json")
    index = encoder_dir / "model.safetensors.index.json"
    if not index.exists():
        return [encoder_dir / "model.safetensors"]
    weight_map = _read_json(index).get("weight_map")
    names = set(weight_map.values()) if isinstance(weight_map, dict) else set()
    if not names or not all(isinstance(n, str) and n and Path(n).name == n for n in names):
        raise _damaged(index, "has no valid weight_map")
    return [encoder_dir / name for name in sorted(names)]


def _load_full_encoder(encoder_dir: Path, trust_remote_code: bool):
    from transformers import AutoModel

    try:
        encoder, info = AutoModel.from_pretrained(
            encoder_dir, trust_remote_code=trust_remote_code, use_safetensors=True, output_loading_info=True
        )
    except Exception as exc:  # the files were checked above: what is left is a mismatch between them
        raise _damaged(encoder_dir, f"cannot be loaded ({_first_line(exc)})") from None
    if info.get("missing_keys"):
        keys = sorted(info["missing_keys"])
        raise _damaged(encoder_dir, f"lacks {len(keys)} weights its config.json needs (e.g. {keys[0]})")
    return encoder


def _load_adapter(encoder, path: Path, base: str | None):
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            encoder = PeftModel.from_pretrained(encoder, str(path))
        except Exception as exc:  # the files were checked above: what is left is a mismatch with the base model
            problem = f"cannot be applied to base model {base or 'default'} ({type(exc).__name__}: {_first_line(exc)})"
            raise _damaged(path / ADAPTER_CONFIG_FILE, f"(with {ADAPTER_FILE}) {problem}") from None
    for w in caught:
        if "missing adapter keys" in str(w.message):
            problem = f"lacks weights its {ADAPTER_CONFIG_FILE} needs (mixed runs?)"
            raise _damaged(path / ADAPTER_FILE, problem)
        if not issubclass(w.category, FutureWarning):  # transformers' deprecation notices about calls peft makes
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return encoder


def _hidden_size(config) -> int:
    return int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0) or 0)


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
