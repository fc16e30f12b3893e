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
from safetensors.torch import load_file, save_file
from torch import nn

from .._backbone import load_encoder, load_tokenizer
from .._errors import MetapeftError

FORMAT_VERSION = 1
META_FILE = "metapeft.json"
HEAD_FILE = "head.safetensors"


class TextClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_labels: int, hidden_size: int, prompt_learning: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden_size, num_labels)
        self.prompt_learning = prompt_learning

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
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
        return self.head(pooled)


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
                texts[i : i + batch_size], pairs[i : i + batch_size] if pairs else None,
                truncation=True, max_length=self.max_length, padding=True, return_tensors="pt",
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
        written += [path / "adapter_config.json", path / "adapter_model.safetensors"]
    elif kind == "full":
        model.encoder.save_pretrained(path / "encoder", safe_serialization=True)
        written += [f for f in (path / "encoder").rglob("*") if f.is_file()]
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(path / HEAD_FILE))
    (path / META_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, "kind": kind, **meta}, indent=2))
    return sum(f.stat().st_size for f in written if f.exists())


def load_classifier(path: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> SavedClassifier:
    """Rebuild a classifier saved by ``metapeft train`` (safetensors only: nothing is unpickled)."""
    from peft import PeftModel
    from transformers import AutoModel

    path = Path(path).expanduser()
    meta_path = path / META_FILE
    if not meta_path.exists():
        raise MetapeftError(f"{path} is not a metapeft output directory (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    base = meta["base_model"]
    if meta["kind"] == "full":
        encoder = AutoModel.from_pretrained(path / "encoder", trust_remote_code=trust_remote_code)
    else:
        encoder = load_encoder(base, trust_remote_code)
        if meta["kind"] == "peft":
            with warnings.catch_warnings():  # transformers' deprecation notices about calls peft makes, not the user
                warnings.simplefilter("ignore", FutureWarning)
                encoder = PeftModel.from_pretrained(encoder, path)
    head_state = load_file(str(path / HEAD_FILE))
    num_labels, hidden = head_state["weight"].shape
    model = TextClassifier(encoder, num_labels, hidden, prompt_learning=meta.get("prompt_learning", False))
    model.head.load_state_dict(head_state)
    model.to(device).eval()
    labels = meta.get("label_names")
    if labels is None:  # folders an older `metapeft train` wrote lack them (a bug)
        labels = [str(i) for i in range(num_labels)]
        warnings.warn(f"{path} has no label names (saved by an older metapeft): predict returns class indices 0..{num_labels - 1} in sorted label order", stacklevel=2)
    return SavedClassifier(model, load_tokenizer(base, trust_remote_code), labels, meta["max_length"], meta)
