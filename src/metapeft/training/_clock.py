"""Training time without the time the process was suspended, and the share of its CPU time a run got."""

from __future__ import annotations

import statistics


class StepClock:
    """Seconds of training, step by step, less the time the process was stopped.

    A benchmark worker paused with SIGSTOP (to free its cores for a while) resumes in the middle of a step, and the
    wall clock counts the whole pause as that step: 29 of the 1,337 runs of the shipped prior recorded training
    times inflated so, one by 50 minutes. A step that took more than :attr:`SUSPECT` times the median of the recent
    steps, and over :attr:`MIN_GAP` seconds more, is counted at that median; the rest is reported as
    :attr:`suspended_s`. Contention slows steps by a small factor, not tenfold, so it stays counted — and is measured
    instead: given the process's CPU seconds of each step (``time.process_time``), :meth:`cpu_share` says how much of
    the CPU its threads could use they got. On 2 cores a run alone gets 0.98–1.00 with 1 or 2 threads; three one-thread
    runs side by side get 0.66 each (1.8× slower), two two-thread runs 0.49 (5× slower).

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
        self.counted_s = 0.0
        self.cpu_s = 0.0

    def add(self, seconds: float, cpu_seconds: float | None = None) -> float:
        """Count a step of ``seconds`` (wall clock) that used ``cpu_seconds`` of the process's CPU time (all its
        threads; a stopped process uses none); returns the seconds counted."""
        if cpu_seconds is not None:
            self.cpu_s += cpu_seconds
        if len(self.recent) >= self.WARMUP:
            median = statistics.median(self.recent)
            if seconds > self.SUSPECT * median and seconds - median > self.MIN_GAP:
                self.suspended_s += seconds - median
                seconds = median
        self.recent.append(seconds)
        del self.recent[: -self.WINDOW]
        self.counted_s += seconds
        return seconds

    def cpu_share(self, threads: int) -> float | None:
        """CPU seconds over counted seconds × ``threads``: near 1 for a run that had its cores to itself, lower where
        other processes took them; None before any step with CPU seconds."""
        if not self.cpu_s or not self.counted_s:
            return None
        return round(self.cpu_s / (self.counted_s * max(1, threads)), 3)
