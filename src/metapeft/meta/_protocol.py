"""The one protocol every selector follows (the meta-learner and the evaluation's baselines), and its conformance
check.

A selector learns from past runs which configurations do well on which tasks. Lifecycle:

1. ``fit(records)`` learns from scratch from :class:`~metapeft.experience.Experience` records (it reads the usable
   ones) and returns the selector;
2. ``predict(profile, candidates)`` answers for any task profile, seen or not, with a
   :class:`~metapeft.meta.Prediction` for the candidate configurations: mean, 90% low and high of accuracy,
   seconds and MB per candidate (a baseline without a model of cost or uncertainty returns its score as the
   accuracy and equal bounds);
3. ``partial_fit(records)`` continues learning when runs arrive, given the whole current experience (old and new
   runs); the default learns again from scratch, a selector that can continue overrides it.

A subclass overrides ``fit`` and ``predict`` (and ``partial_fit`` when it can learn incrementally).
:func:`check_selector` is the conformance test (scikit-learn's ``check_estimator`` for this protocol); the test suite
runs it over every selector the evaluation knows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ..experience import Experience


class Selector(ABC):
    """Base class of selectors (module docstring: the lifecycle and what a subclass overrides)."""

    @abstractmethod
    def fit(self, records: list[Experience]) -> Selector:
        """Learn from scratch from ``records``; returns ``self``."""

    def partial_fit(self, records: list[Experience]) -> Selector:
        """Continue learning from the current experience ``records`` (old runs and new); returns ``self``."""
        return self.fit(records)

    @abstractmethod
    def predict(self, profile: dict, candidates: list):
        """A :class:`~metapeft.meta.Prediction` for ``candidates`` (``Candidate`` objects) on the task ``profile``."""


def check_selector(make, records: list[Experience], profile: dict, candidates: list) -> None:
    """Assert that the selector ``make()`` follows the protocol, on real ``records``, a task ``profile`` (one the
    records do not hold, as in leave-one-task-out) and ``candidates`` (at least two methods).

    Checked: fit and partial_fit return the selector; predict gives finite (n, 3) arrays with low ≤ mean ≤ high in
    the order of ``candidates``; predictions do not depend on the order candidates are asked in (up to sampling
    for a selector that draws at random: only the shape is checked for it); the selector can partial_fit on more
    runs and still predict; a candidate of a method it never saw still gets an answer.
    """
    selector = make()
    assert isinstance(selector, Selector), f"{type(selector).__name__} does not derive from Selector"
    assert selector.fit(records) is selector, "fit must return the selector"
    pred = selector.predict(profile, candidates)
    n = len(candidates)
    for name in ("mean", "low", "high"):
        value = np.asarray(getattr(pred, name))
        assert value.shape == (n, 3), f"{name} has shape {value.shape}, not ({n}, 3)"
        assert np.isfinite(value).all(), f"{name} is not finite"
    assert (pred.low <= pred.mean + 1e-9).all() and (pred.mean <= pred.high + 1e-9).all(), (
        "low <= mean <= high must hold"
    )
    if not getattr(selector, "random", False):
        order = np.random.default_rng(0).permutation(n)
        again = make().fit(records).predict(profile, [candidates[i] for i in order])
        assert np.allclose(np.asarray(again.mean)[:, 0], np.asarray(pred.mean)[order, 0], atol=1e-6), (
            "predictions depend on the candidates' order or on the run"
        )
    half = records[::2]  # every task still, fewer runs
    fresh = make().fit(half)
    assert fresh.partial_fit(records) is fresh, "partial_fit must return the selector"
    assert np.asarray(fresh.predict(profile, candidates).mean).shape == (n, 3)
    seen = {r.method for r in records}
    unseen = [c for c in candidates if c.method not in seen]
    if not unseen:  # a method none of the records ran: the selector must still answer
        from ..methods import list_methods

        missing = [m.name for m in list_methods() if m.name not in seen]
        if missing:
            from ._surrogate import Candidate

            unseen = [Candidate(missing[0], {})]
    if unseen:
        assert np.isfinite(np.asarray(selector.predict(profile, unseen).mean)).all(), (
            "a method without runs gets no answer"
        )
