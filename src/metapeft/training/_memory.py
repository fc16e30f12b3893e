"""Peak memory of a training run: max allocated on CUDA, otherwise peak process RSS sampled in a thread.

RSS is sampled (psutil, every 5 ms) rather than read from ``ru_maxrss`` because a warm worker runs many
trainings in one process and ``ru_maxrss`` never goes down between them.
"""

from __future__ import annotations

import threading

import psutil
import torch


class PeakMemory:
    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.peak_bytes = self.start_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            process = psutil.Process()
            self.peak_bytes = self.start_bytes = process.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    @property
    def growth_mb(self) -> float:
        """Peak above the level at the start (model loaded): activations, gradients, optimiser state."""
        return round(max(0, self.peak_bytes - self.start_bytes) / 2**20, 1)
