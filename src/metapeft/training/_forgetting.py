"""How much general knowledge a run costs the encoder: a frozen linear probe on other tasks, before and after.

Fine-tuning for one task can overwrite what the pretrained encoder knew (catastrophic forgetting); a method switch
merges what was learned into the weights, which makes the question sharper. :class:`LinearProbe` measures it the
standard way: the encoder's pooled embeddings of other tasks' examples, a logistic regression fitted on a training
sample of each and scored on a test sample, once with the pretrained encoder (at the start of the run, adapters
disabled) and once with the trained one (at its end, adapters active: the encoder as the trained model uses it).
The drop is in points of accuracy; full fine-tuning is the reference a PEFT method is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from ..tasks import Task, stratified_indices
from ._callbacks import TrainerCallback, TrainerState


class LinearProbe(TrainerCallback):
    """Probe accuracy of the encoder on ``tasks`` before and after training; the figures land in the run's metrics
    as ``forgetting`` (per task: ``before``, ``after``; ``drop``: the mean of before − after, in points).

    Args:
        tasks: Tasks other than the one trained (their training split fits the probe, their test split scores it).
        model: The base model the run trains (its tokenizer embeds the probe texts).
        n_train: Probe training examples per task (stratified sample).
        n_test: Probe test examples per task (stratified sample).
        max_length: Tokens per probe example.
        seed: Draws the samples (the same rows before and after).
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        model: str | None = None,
        *,
        n_train: int = 512,
        n_test: int = 500,
        max_length: int = 128,
        seed: int = 0,
    ):
        from .._backbone import load_tokenizer

        self.tokenizer = load_tokenizer(model)
        self.max_length = max_length
        self.samples = [(t.name, _sample(t.train, n_train, seed), _sample(t.test, n_test, seed)) for t in tasks]
        self.before: dict[str, float] = {}
        self.after: dict[str, float] = {}

    def on_train_begin(self, state: TrainerState) -> None:
        with _pristine(state.model):
            self.before = self.score(state.model)

    def on_train_end(self, state: TrainerState) -> None:
        if state.step < 1:
            return
        self.after = self.score(state.model)
        drops = [self.before[k] - self.after[k] for k in self.after]
        state.metrics["forgetting"] = {
            "probe": {k: {"before": round(self.before[k], 4), "after": round(self.after[k], 4)} for k in self.after},
            "drop": round(100 * float(np.mean(drops)), 2),
        }

    @torch.inference_mode()
    def score(self, classifier) -> dict[str, float]:
        """Probe accuracy per task of ``classifier``'s encoder as it is now."""
        from sklearn.linear_model import LogisticRegression

        training = classifier.training
        classifier.eval()
        try:
            out = {}
            for name, train, test in self.samples:
                x_train, x_test = self._embed(classifier, train), self._embed(classifier, test)
                mean, sd = x_train.mean(0), x_train.std(0) + 1e-6
                probe = LogisticRegression(max_iter=2000, C=1.0).fit((x_train - mean) / sd, train.labels)
                out[name] = float(probe.score((x_test - mean) / sd, test.labels))
            return out
        finally:
            classifier.train(training)

    def _embed(self, classifier, split) -> np.ndarray:
        device = next(classifier.parameters()).device
        chunks = []
        for i in range(0, len(split), 64):
            batch = self.tokenizer(
                split.texts[i : i + 64],
                split.pairs[i : i + 64] if split.pairs else None,
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            chunks.append(classifier.embed(**{k: v.to(device) for k, v in batch.items()}).float().cpu().numpy())
        return np.concatenate(chunks)


@contextmanager
def _pristine(classifier):
    """The classifier with its encoder as pretrained, for the block: virtual tokens are bypassed by reading the
    base model (peft's ``disable_adapter`` fails for prompt learning on encoders), adapters are disabled, and a fresh
    full fine-tuning encoder is the base already."""
    encoder = classifier.encoder
    if getattr(encoder, "peft_config", None) and classifier.prompt_learning:
        classifier.encoder, classifier.prompt_learning = encoder.get_base_model(), False
        try:
            yield
        finally:
            classifier.encoder, classifier.prompt_learning = encoder, True
    else:
        with encoder.disable_adapter() if hasattr(encoder, "disable_adapter") else nullcontext():
            yield


def _sample(split, n: int, seed: int):
    return split if len(split) <= n else split.select(np.sort(stratified_indices(split.labels, n, seed)))
