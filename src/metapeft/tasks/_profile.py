"""Task profile: the features the meta-learner sees for a (dataset, base model) pair.

Everything is computed from samples so that profiling stays fast on large files: token statistics from
<= 2,000 texts, the domain vector and the complexity landmark from <= 512 texts embedded with the default
encoder (all-MiniLM-L6-v2, mean pooling, as it was trained).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import typing
import warnings
from collections import Counter
from dataclasses import MISSING, asdict, dataclass, field

import numpy as np

from .._backbone import backbone_info, load_encoder, load_tokenizer
from .._config import DEFAULT_MODEL, data_dir
from .._errors import MetapeftError
from ._causal import CausalTask
from ._task import Task, stratified_indices

TOKEN_SAMPLE = 2000
EMBED_SAMPLE = 512


@dataclass
class TaskProfile:
    """Meta-features of a task. Extends the seed design's TaskCharacteristics (dataset_size, sequence_length,
    vocabulary_size, domain, task_type, complexity_score)."""

    task_name: str
    fingerprint: str
    dataset_size: int
    test_size: int
    num_classes: int
    task_type: str  # "single", "pair" or "causal_lm" (prompt → completion; classification verbalised is one too)
    class_entropy: float  # label entropy / log(num_classes): 1 = balanced
    imbalance_ratio: float  # largest class count / smallest class count
    token_length_p50: float
    token_length_p90: float
    token_length_p95: float
    token_length_max: int
    sequence_length: int  # the max_length the engine will use by default: p95 rounded up to 8, within [16, 256]
    vocabulary_size: int  # distinct lower-cased word types in the sampled texts
    type_token_ratio: float
    unk_rate: float  # fraction of tokens the tokenizer maps to its unknown token
    probe_accuracy: float  # cross-validated logistic regression on frozen embeddings
    majority_accuracy: float  # chance level: share of the largest class
    complexity_score: float  # 1 - (probe - chance) / (1 - chance): 0 = linearly easy, 1 = no better than chance
    domain: str | None
    model: dict  # base model traits: name, architecture, parameters, layers, hidden size…
    domain_vector: list[float] = field(repr=False, default_factory=list)
    backend: str = "torch"  # the framework the runs train with: a condition of the run, like the base model

    def __post_init__(self) -> None:
        for name, f in self.__dataclass_fields__.items():
            if (kind := _KINDS.get(f.type)) is None:
                continue  # model and domain_vector: checked below
            value = getattr(self, name)
            if kind is str:
                ok = isinstance(value, str) or (f.type == "str | None" and value is None)
            else:
                ok = _finite(value) and value >= 0 and (kind is float or float(value).is_integer())
            if not ok:
                raise MetapeftError(f"task profile: {name} must be {_KIND_NAMES[kind]}, got {value!r:.60}")
        if self.task_type not in ("single", "pair", "causal_lm"):
            raise MetapeftError(
                f"task profile: task_type must be 'single', 'pair' or 'causal_lm', got {self.task_type!r}"
            )
        if (self.num_classes < 2 and self.task_type != "causal_lm") or self.dataset_size < 1:
            raise MetapeftError(
                f"task profile: num_classes >= 2 and dataset_size >= 1 needed, got {self.num_classes} and "
                f"{self.dataset_size}"
            )
        if not isinstance(self.model, dict):
            raise MetapeftError(
                f"task profile: model must be an object of base-model traits, got {type(self.model).__name__}"
            )
        for trait in MODEL_NUMBERS:  # what the meta-learners read of the base model
            if self.model.get(trait) is not None and not (_finite(self.model[trait]) and self.model[trait] >= 0):
                raise MetapeftError(
                    f"task profile: model.{trait} must be a finite number >= 0, got {self.model[trait]!r:.60}"
                )
        if not isinstance(self.domain_vector, list) or not all(_finite(v) for v in self.domain_vector):
            raise MetapeftError("task profile: domain_vector must be a list of finite numbers")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaskProfile:
        """The profile in ``data`` (as ``as_dict`` and ``metapeft profile --json`` give it; other keys are ignored),
        checked: a missing or ill-typed field raises one :class:`MetapeftError` naming it."""
        if not isinstance(data, dict):
            raise MetapeftError(f"a task profile is a JSON object, got {type(data).__name__}")
        fields = cls.__dataclass_fields__
        required = [n for n, f in fields.items() if f.default is MISSING and f.default_factory is MISSING]
        if missing := [n for n in required if n not in data]:
            raise MetapeftError(f"task profile lacks {', '.join(missing)}; send what `metapeft profile --json` prints")
        return cls(**{k: v for k, v in data.items() if k in fields})


_KIND_NAMES = {str: "text", int: "a whole number >= 0", float: "a finite number >= 0"}
_KINDS = {
    "str": str,
    "str | None": str,
    "int": int,
    "float": float,
}  # the field annotations checked (as strings: postponed)
MODEL_NUMBERS = ("num_parameters", "num_layers", "hidden_size")  # base-model traits the meta-learners read


def _finite(value) -> bool:
    """A finite number (not a bool; an integer too large for a float is not finite either)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _texts(task: Task, idx) -> list[str]:
    split = task.train
    if split.pairs is None:
        return [split.texts[i] for i in idx]
    return [f"{split.texts[i]} [SEP] {split.pairs[i]}" for i in idx]


def profile_task(
    task: Task | CausalTask, model: str | None = None, seed: int = 0, trust_remote_code: bool = False
) -> TaskProfile:
    """The profile of ``task`` (a classification or a causal-LM task) for the base model ``model``."""
    if isinstance(task, CausalTask):
        return _profile_causal(task, model, seed, trust_remote_code)
    info = backbone_info(model, trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code)
    labels = np.asarray(task.train.labels)
    token_idx = stratified_indices(task.train.labels, min(TOKEN_SAMPLE, len(task.train)), seed)
    split = task.train
    texts = [split.texts[i] for i in token_idx]
    pairs = [split.pairs[i] for i in token_idx] if split.pairs is not None else None
    encoded = tokenizer(texts, pairs, truncation=False, add_special_tokens=True)["input_ids"]
    embed_idx = token_idx[:EMBED_SAMPLE]
    embeddings = embed_texts(_texts(task, embed_idx))
    probe, majority = _probe(embeddings, labels[embed_idx], seed)
    return TaskProfile(
        task_name=task.name,
        fingerprint=task.fingerprint,
        dataset_size=len(task.train),
        test_size=len(task.test),
        num_classes=task.num_labels,
        task_type="pair" if task.is_pair else "single",
        **_label_fields(labels, task.num_labels),
        **_text_fields(encoded, texts + (pairs or []), tokenizer.unk_token_id),
        **_landmark_fields(probe, majority),
        domain=task.domain,
        model={k: v for k, v in info.as_dict().items() if k not in ("path", "linear_modules")},
        domain_vector=[round(float(x), 5) for x in embeddings.mean(axis=0)],
    )


def _profile_causal(task: CausalTask, model: str | None, seed: int, trust_remote_code: bool) -> TaskProfile:
    """A causal-LM task's profile: token statistics of prompt + completion with the model's tokenizer, the domain
    vector of the same texts; for a verbalised classification task, the label statistics and the frozen probe of its
    prompts as for the task itself. Free text has no classes: no probe (0), complexity 1."""
    info = backbone_info(model, trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(task.train))[:TOKEN_SAMPLE]  # a random sample, and its head a random one too
    texts = [p + c for p, c in (task.train[i] for i in idx)]
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    embed_idx = idx[:EMBED_SAMPLE]
    embeddings = embed_texts([task.train[i][0] or task.train[i][1] for i in embed_idx])
    labels = {"class_entropy": 0.0, "imbalance_ratio": 1.0}
    landmark = {"probe_accuracy": 0.0, "majority_accuracy": 0.0, "complexity_score": 1.0}
    if task.labels:
        y = np.array([task.labels.index(c) if c in task.labels else 0 for _, c in task.train])
        labels = _label_fields(y, len(task.labels))
        landmark = _landmark_fields(*_probe(embeddings, y[embed_idx], seed))
    return TaskProfile(
        task_name=task.name,
        fingerprint=task.fingerprint,
        dataset_size=len(task.train),
        test_size=len(task.test),
        num_classes=len(task.labels or []),
        task_type="causal_lm",
        **labels,
        **_text_fields(encoded, texts, tokenizer.unk_token_id),
        **landmark,
        domain=task.domain,
        model={k: v for k, v in info.as_dict().items() if k not in ("path", "linear_modules")},
        domain_vector=[round(float(x), 5) for x in embeddings.mean(axis=0)],
    )


def _label_fields(labels: np.ndarray, num_classes: int) -> dict:
    """``class_entropy`` (label entropy / log(classes): 1 = balanced) and ``imbalance_ratio`` of the labels."""
    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    probs = present / present.sum()
    entropy = float(-(probs * np.log(probs)).sum() / math.log(num_classes)) if num_classes > 1 else 0.0
    return {"class_entropy": round(entropy, 4), "imbalance_ratio": round(float(present.max() / present.min()), 3)}


def _text_fields(encoded: list[list[int]], texts: list[str], unk_id: int | None) -> dict:
    """Token-length percentiles and the default sequence length of the ``encoded`` sample, word statistics of its
    ``texts``, and the share of unknown tokens."""
    lengths = np.array([len(ids) for ids in encoded])
    unk = sum(ids.count(unk_id) for ids in encoded) if unk_id is not None else 0
    words = Counter(w for t in texts for w in re.findall(r"\w+", t.lower()))
    p95 = float(np.percentile(lengths, 95))
    return {
        "token_length_p50": float(np.percentile(lengths, 50)),
        "token_length_p90": float(np.percentile(lengths, 90)),
        "token_length_p95": p95,
        "token_length_max": int(lengths.max()),
        "sequence_length": default_max_length(p95),
        "vocabulary_size": len(words),
        "type_token_ratio": round(len(words) / max(1, sum(words.values())), 4),
        "unk_rate": round(unk / max(1, int(lengths.sum())), 5),
    }


def _landmark_fields(probe: float, majority: float) -> dict:
    """The frozen probe's accuracy, chance, and the complexity they give (0 = linearly easy, 1 = chance)."""
    complexity = 1.0 - (probe - majority) / (1.0 - majority) if majority < 1 else 1.0
    return {
        "probe_accuracy": round(probe, 4),
        "majority_accuracy": round(majority, 4),
        "complexity_score": round(float(np.clip(complexity, 0.0, 1.0)), 4),
    }


def cached_profile(task: Task | CausalTask, model: str | None = None, trust_remote_code: bool = False) -> TaskProfile:
    """``profile_task`` cached in ``$METAPEFT_HOME/profiles`` by dataset fingerprint and model. A cache file that is
    not a valid profile of this task (truncated, garbage, wrong fields or types) is a miss: recomputed, overwritten."""
    model_key = hashlib.sha256((model or DEFAULT_MODEL).encode()).hexdigest()[:8]
    path = data_dir() / "profiles" / f"{task.fingerprint}-{model_key}.json"
    try:
        cached = _valid_profile(json.loads(path.read_text(encoding="utf-8")), task.fingerprint)
    except (OSError, ValueError):  # missing or unreadable; ValueError covers bad JSON and bad UTF-8
        cached = None
    if cached is not None:
        return cached
    profile = profile_task(task, model, trust_remote_code=trust_remote_code)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")  # then rename: never half a file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(profile.as_dict(), f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a profile is not a secret
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return profile


def _valid_profile(data, fingerprint: str) -> TaskProfile | None:
    """``data`` as a TaskProfile when it has every field, each of its declared type, and ``fingerprint``; else None."""
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint:
        return None
    for name, hint in typing.get_type_hints(TaskProfile).items():
        if name not in data or not _of_type(data[name], hint):
            return None
    return TaskProfile.from_dict(data)


def _of_type(value, hint) -> bool:
    if hint in (int, float):  # a float field takes a whole number too (3 for 3.0); neither takes true/false
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_of_type(v, typing.get_args(hint)[0]) for v in value)
    return isinstance(value, typing.get_args(hint) or hint)


def default_max_length(p95: float) -> int:
    return int(min(256, max(16, math.ceil(p95 / 8) * 8)))


def embed_texts(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings with the default encoder."""
    import torch

    tokenizer, encoder = load_tokenizer(None), _frozen_default_encoder()
    order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


_ENCODER = None


def _frozen_default_encoder():
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = load_encoder(None)
    return _ENCODER


def _probe(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

    majority = float(np.bincount(y).max() / len(y))
    if len(np.unique(y)) < 2 or len(y) < 6:
        return majority, majority
    min_count = np.bincount(y)[np.bincount(y) > 0].min()
    folds = (
        StratifiedKFold(3, shuffle=True, random_state=seed)
        if min_count >= 3
        else KFold(3, shuffle=True, random_state=seed)
    )
    with warnings.catch_warnings():  # a fold left with one class fails (tiny tasks): scored as NaN and skipped
        warnings.simplefilter(
            "ignore"
        )  # (the warning would print that fit's traceback); with >= 2 classes one fold fits
        scores = cross_val_score(LogisticRegression(C=10.0, max_iter=300), x, y, cv=folds, error_score=np.nan)
    return float(np.nanmean(scores)), majority
