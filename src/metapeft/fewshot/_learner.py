"""The few-shot classifier and its meta-learner.

The classifier is the base encoder wrapped by a PEFT method, mean pooling, L2 normalisation and a head made of
class prototypes: the mean normalised embedding of each label's support examples, scored by cosine similarity
times a learned scale. A head that is computed, not trained, works for any label set, so one set of PEFT
parameters (and the scale) can be meta-learned over tasks whose labels differ.

Adaptation (the inner loop) fine-tunes the PEFT parameters and the scale on the support set with Adam for a few
steps, each on a batch of support examples scored against leave-one-out prototypes (an example never votes for
its own class). Meta-learning (the outer loop) moves the initial parameters towards the adapted ones (Reptile,
Nichol et al. 2018) or along the query loss's gradient at the adapted ones (first-order MAML). Written in plain
torch: learn2learn and higher are unmaintained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .._errors import MetapeftError
from ..methods import get_method, with_default_steps
from ..tasks import Split
from ..training import Batches, TextClassifier, build_classifier

ALGORITHMS = ("reptile", "fomaml")
OUTER_OPTIMIZERS = ("sgd", "adam")


@dataclass
class InnerLoop:
    """How a task is adapted from the initialisation (the same in meta-training and in ``adapt``).

    Args:
        steps: Adam steps on the support set.
        lr: Adam learning rate of the PEFT parameters and the scale.
        batch_size: Support examples per step (all of them when fewer).
        max_length: Tokens per example after truncation.
    """

    steps: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 64

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.batch_size < 2 or self.max_length < 8:
            raise MetapeftError(
                f"inner loop: steps >= 0, lr > 0, batch_size >= 2 and max_length >= 8 needed, got {asdict(self)}"
            )


class FewShotModel(nn.Module):
    """Encoder + PEFT method + prototype head (see the module docstring)."""

    def __init__(self, classifier: TextClassifier, tokenizer, scale: float = 10.0):
        super().__init__()
        self.classifier = classifier
        self.classifier.head.requires_grad_(False)  # the head is the prototypes, computed
        self.tokenizer = tokenizer
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    @classmethod
    def build(cls, method: str = "lora", settings: dict | None = None, model: str | None = None) -> FewShotModel:
        """A fresh model: ``method`` with ``settings`` (its hyperparameters) on ``model`` (default
        all-MiniLM-L6-v2)."""
        from .._backbone import backbone_info, load_tokenizer

        spec = get_method(method)
        if spec.kind != "peft":
            raise MetapeftError(
                f"few-shot adaptation meta-learns PEFT parameters; {method} has none (use lora, ia3, "
                "prefix_tuning, prompt_tuning…)"
            )
        # the method's own step budget does not apply (adaptation runs its inner steps), but a peft config that
        # schedules by it (AdaLoRA) needs one: the smallest default
        config = with_default_steps(spec.make_config(settings or {}), 0)
        backbone = backbone_info(model)
        spec.check_compatible(config, backbone)
        classifier = build_classifier(spec, config, backbone, num_labels=1, model=model, normalize=True)
        return cls(classifier, load_tokenizer(model))

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        """What is meta-learned and adapted: the PEFT parameters and the log scale."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def batches(self, split: Split, max_length: int) -> Batches:
        return Batches(self.tokenizer, split, max_length)

    def embed(self, data: Batches, indices) -> torch.Tensor:
        return self.classifier.embed(**data.collate(list(indices), torch.device("cpu")))

    def embed_all(self, data: Batches, batch_size: int = 128) -> torch.Tensor:
        return torch.cat(
            [self.embed(data, range(i, min(i + batch_size, len(data)))) for i in range(0, len(data), batch_size)]
        )

    def logits(self, embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * embeddings @ prototypes.T


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Each class's mean embedding, L2-normalised."""
    sums = torch.zeros(classes, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, labels, embeddings)
    return nn.functional.normalize(sums, dim=-1)


def leave_one_out_loss(
    model: FewShotModel, embeddings: torch.Tensor, labels: torch.Tensor, classes: int
) -> torch.Tensor:
    """Cross-entropy of each example against the prototypes of the others (its own class's prototype without it);
    examples alone in their class in the batch are left out."""
    sums = torch.zeros(classes, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=classes)
    keep = counts[labels] > 1
    if not keep.any():
        return embeddings.sum() * 0.0
    logits = model.logits(embeddings, nn.functional.normalize(sums, dim=-1))
    own = nn.functional.normalize(sums[labels] - embeddings, dim=-1)
    logits = logits.scatter(1, labels[:, None], model.log_scale.exp() * (embeddings * own).sum(-1, keepdim=True))
    return nn.functional.cross_entropy(logits[keep], labels[keep])


def adapt_in_place(model: FewShotModel, support: Split, loop: InnerLoop, rng: np.random.Generator) -> list[float]:
    """Run the inner loop on ``support`` (labels 0..N-1), changing ``model``'s meta-parameters. Returns the losses."""
    data = model.batches(support, loop.max_length)
    labels = torch.tensor(support.labels)
    classes = int(labels.max()) + 1
    optimizer = torch.optim.Adam(model.meta_parameters().values(), lr=loop.lr)
    model.train()
    losses = []
    for _ in range(loop.steps):
        idx = (
            np.arange(len(data))
            if len(data) <= loop.batch_size
            else _stratified_batch(support.labels, loop.batch_size, rng)
        )
        loss = leave_one_out_loss(model, model.embed(data, idx), labels[idx], classes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def support_prototypes(model: FewShotModel, support: Split, max_length: int) -> torch.Tensor:
    model.eval()
    labels = torch.tensor(support.labels)
    return prototypes(model.embed_all(model.batches(support, max_length)), labels, int(labels.max()) + 1)


@torch.no_grad()
def predict(model: FewShotModel, protos: torch.Tensor, data: Split, max_length: int) -> np.ndarray:
    model.eval()
    return model.logits(model.embed_all(model.batches(data, max_length)), protos).argmax(-1).numpy()


def _stratified_batch(labels: list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` examples with as many classes as possible holding two or more (a leave-one-out prototype needs it)."""
    labels_arr = np.asarray(labels)
    classes = rng.permutation(np.unique(labels_arr))[: max(1, size // 2)]
    per = max(2, size // len(classes))
    rows = [rng.permutation(np.flatnonzero(labels_arr == c))[:per] for c in classes]
    return np.concatenate(rows)[:size]


@dataclass
class StepResult:
    """What one outer step did: mean support loss (last inner step), query loss and accuracy after adaptation, and
    the size (L2 norm) of the change of the initialisation."""

    support_loss: float
    query_loss: float
    query_accuracy: float
    update_norm: float


@dataclass
class ReptileLearner:
    """Meta-learns ``model``'s PEFT parameters and scale over episodes.

    Lifecycle: build it around a :class:`FewShotModel`, call :meth:`meta_train_step` with a batch of episodes per
    outer iteration (the initialisation lives in the model's meta-parameters between calls), then save the model's
    meta-parameters as the meta-initialisation.

    Args:
        model: The model whose meta-parameters are the initialisation.
        inner: The adaptation each episode gets.
        outer_lr: Step size of the outer update (Reptile: the fraction of the way towards the adapted parameters).
        algorithm: ``reptile`` or ``fomaml`` (first-order MAML: the query loss's gradient at the adapted parameters;
            with no inner steps this is episodic prototypical-network training).
        outer_optimizer: ``sgd`` (the initialisation moves by ``outer_lr`` times the mean direction, as in the
            Reptile paper) or ``adam`` (the negated mean direction is Adam's gradient, at learning rate ``outer_lr``;
            the usual choice for MAML).
        seed: Seeds the inner loop's batches.
    """

    model: FewShotModel
    inner: InnerLoop = field(default_factory=InnerLoop)
    outer_lr: float = 0.5
    algorithm: str = "reptile"
    seed: int = 0
    outer_optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise MetapeftError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if self.outer_lr <= 0:
            raise MetapeftError(f"outer_lr must be positive, got {self.outer_lr}")
        if self.outer_optimizer not in OUTER_OPTIMIZERS:
            raise MetapeftError(
                f"outer_optimizer must be one of {', '.join(OUTER_OPTIMIZERS)}, got {self.outer_optimizer!r}"
            )
        self._rng = np.random.default_rng(self.seed)
        params = list(self.model.meta_parameters().values())
        self._outer = torch.optim.Adam(params, lr=self.outer_lr) if self.outer_optimizer == "adam" else None

    def meta_train_step(self, episodes: list, outer_lr: float | None = None) -> StepResult:
        """One outer update over ``episodes`` (see the class docstring); ``outer_lr`` overrides the step size (a
        schedule)."""
        params = self.model.meta_parameters()
        start = {n: p.detach().clone() for n, p in params.items()}
        direction = {n: torch.zeros_like(p) for n, p in start.items()}
        support_losses, query_losses, accuracies = [], [], []
        for episode in episodes:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(start[n])
            losses = adapt_in_place(self.model, episode.support, self.inner, self._rng)
            support_losses.append(losses[-1] if losses else float("nan"))
            query_loss, accuracy = self.query(episode, grad=self.algorithm == "fomaml")
            query_losses.append(query_loss)
            accuracies.append(accuracy)
            with torch.no_grad():
                for n, p in params.items():
                    if self.algorithm == "reptile":
                        direction[n] += p.detach() - start[n]
                    elif p.grad is not None:
                        direction[n] -= p.grad
        step = self.outer_lr if outer_lr is None else outer_lr
        with torch.no_grad():
            for n, p in params.items():
                if self._outer is None:
                    p.copy_(start[n] + step * direction[n] / len(episodes))
                    p.grad = None
                else:
                    p.copy_(start[n])
                    p.grad = -direction[n] / len(episodes)
        if self._outer is not None:
            for group in self._outer.param_groups:
                group["lr"] = step
            self._outer.step()
            self._outer.zero_grad(set_to_none=True)
        norm = float(torch.sqrt(sum(((p.detach() - start[n]) ** 2).sum() for n, p in params.items())))
        return StepResult(
            float(np.mean(support_losses)), float(np.mean(query_losses)), float(np.mean(accuracies)), norm
        )

    def outer_state(self) -> dict[str, torch.Tensor]:
        """The outer optimiser's state as named tensors (empty for SGD), for a checkpoint."""
        if self._outer is None:
            return {}
        names = {id(p): n for n, p in self.model.meta_parameters().items()}
        out = {}
        for p, state in self._outer.state.items():
            for key, value in state.items():
                out[f"{names[id(p)]}::{key}"] = (
                    torch.as_tensor(value).detach().clone().reshape(-1) if key == "step" else value.detach().clone()
                )
        return out

    def load_outer_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`outer_state` returned."""
        if self._outer is None or not tensors:
            return
        params = self.model.meta_parameters()
        for name, value in tensors.items():
            pname, key = name.rsplit("::", 1)
            self._outer.state[params[pname]][key] = value.reshape(()) if key == "step" else value.clone()

    def query(self, episode, grad: bool = False, max_length: int | None = None) -> tuple[float, float]:
        """Query loss and accuracy with the model's current parameters, prototypes from the whole support set; with
        ``grad`` the loss's gradient is left in the parameters' ``.grad`` (first-order MAML)."""
        model, max_length = self.model, max_length or self.inner.max_length
        labels = torch.tensor(episode.support.labels)
        query_labels = torch.tensor(episode.query.labels)
        model.eval()  # no dropout: the prototypes and the query see the adapted model as adapt() will use it
        with torch.set_grad_enabled(grad):
            for p in model.meta_parameters().values():
                p.grad = None
            protos = prototypes(
                model.embed_all(model.batches(episode.support, max_length)), labels, int(labels.max()) + 1
            )
            logits = model.logits(model.embed_all(model.batches(episode.query, max_length)), protos)
            loss = nn.functional.cross_entropy(logits, query_labels)
            if grad:
                loss.backward()
        return float(loss.detach()), float((logits.argmax(-1) == query_labels).float().mean())
