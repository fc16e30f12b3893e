"""Training time without the time the process was suspended."""

from __future__ import annotations

import statistics


class StepClock:
    """Seconds of training, step by step, less the time the process was stopped.

    A benchmark worker paused with SIGSTOP (to free its cores for a while) resumes in the middle of a step, and the
    wall clock counts the whole pause as that step: 29 of the 1,337 runs of the shipped prior recorded training
    times inflated so, one by 50 minutes. A step that took more than :attr:`SUSPECT` times the median of the recent
    steps, and over :attr:`MIN_GAP` seconds more, is counted at that median; the rest is reported as
    :attr:`suspended_s`. Contention slows steps by a small factor, not tenfold, so it stays counted.

    >>> clock = StepClock()
    >>> [clock.add(s) for s in (1.0, 1.0, 1.0, 1.0, 1.0, 600.0)][-1], clock.suspended_s
    (1.0, 599.0)
    """

    SUSPECT = 10.0
    MIN_GAP = 30.0
    WARMUP = 5  # steps measured before any is judged (the first ones are slow: allocation, caches)
    WINDOW = 50  # the recent steps the median is taken over

    def __init__(self) -> None:
        self.recent: list[float] = []
        self.suspended_s = 0.0

    def add(self, seconds: float) -> float:
        """Count a step of ``seconds`` (wall clock); returns the seconds counted."""
        if len(self.recent) >= self.WARMUP:
            median = statistics.median(self.recent)
            if seconds > self.SUSPECT * median and seconds - median > self.MIN_GAP:
                self.suspended_s += seconds - median
                seconds = median
        self.recent.append(seconds)
        del self.recent[: -self.WINDOW]
        return seconds
