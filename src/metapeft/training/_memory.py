"""Peak tensor memory of a training run: what the method needs, not what the process happens to hold.

On CUDA it is the caching allocator's own peak. Elsewhere there is no allocator statistic, and process RSS (what
this measured until 2026-11-21) is ~2 GB of libraries and allocator caches whatever the method, and never falls
in a warm worker that runs many trainings: it told the methods apart by noise. So it is counted from the tensors:
weights and buffers, plus at each step the gradients, the optimiser state and the activations saved for backward
(unique storages, parameters excluded). Their sum bounds the live tensors at the step's peak from above and is
comparable with the CUDA figure (transient buffers of single kernels aside). torch's own accountant,
``torch.distributed._tools.MemTracker``, registers a gradient hook on every parameter and fails on frozen ones,
i.e. on every PEFT model (torch 2.x), hence this one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ._callbacks import TrainerCallback, TrainerState


def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(address, bytes) of the memory behind ``t``; a tensor without a plain storage (sparse, some subclasses)
    counts as its own bytes."""
    try:
        storage = t.untyped_storage()
        return storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return id(t), t.nbytes


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(dict(_storage(t) for t in tensors).values())


class PeakMemory:
    """Peak tensor memory over the steps of one training run.

    Lifecycle: build the model and optimiser, enter the context before the first step, call ``step()`` after each
    ``optimizer.step()`` (gradients and optimiser state still present) and ``skip()`` after anything between steps
    that is not training (evaluation: on CUDA its batches of 128 would otherwise count), leave it after the last
    step. ``peak_mb`` is the peak; ``growth_mb`` is what training added to the loaded model.
    """

    def __init__(self, device: torch.device, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.device, self.model, self.optimizer = device, model, optimizer
        self.peak_bytes = self.start_bytes = 0
        self._counted = device.type != "cuda"
        self._weights: set[int] = set()
        self._saved: dict[int, int] = {}  # storage address → bytes, activations saved in the current step
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def __enter__(self) -> PeakMemory:
        if not self._counted:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            return self
        tensors = [*self.model.parameters(), *self.model.buffers()]
        self._weights = {_storage(t)[0] for t in tensors}
        self.start_bytes = self.peak_bytes = _unique_bytes(tensors)
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        address, size = _storage(t)
        if address not in self._weights:
            self._saved[address] = size
        return t.detach()  # not t itself: the saved value would refer to the graph that saves it (torch's warning)

    def step(self) -> None:
        if not self._counted:
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device))
            return
        grads = _unique_bytes(p.grad for p in self.model.parameters() if p.grad is not None)
        state = _unique_bytes(
            v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)
        )
        self.peak_bytes = max(self.peak_bytes, self.start_bytes + grads + state + sum(self._saved.values()))
        self._saved.clear()

    def rebase(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Go on counting after the model's trainable parts and the optimiser were replaced (a method switch):
        the new weights count as the loaded model's from here, the peak so far is kept."""
        self.model, self.optimizer = model, optimizer
        if self._counted:
            tensors = [*model.parameters(), *model.buffers()]
            self._weights = {_storage(t)[0] for t in tensors}
            self.start_bytes = _unique_bytes(tensors)
            self.peak_bytes = max(self.peak_bytes, self.start_bytes)

    def skip(self) -> None:
        if not self._counted:
            torch.cuda.reset_peak_memory_stats(self.device)

    def __exit__(self, *exc) -> None:
        if self._counted:
            self._hooks.__exit__(*exc)
        self._hooks = self.model = self.optimizer = None  # the hooks refer back to self: let the model go with the run

    @property
    def measure(self) -> str:
        """How the peak was taken, recorded with it: figures taken otherwise (process RSS before 2026-11-21) are not
        comparable."""
        return "tensors" if self._counted else "cuda_allocator"

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    @property
    def growth_mb(self) -> float:
        """Peak above the loaded model: activations, gradients, optimiser state."""
        return round(max(0, self.peak_bytes - self.start_bytes) / 2**20, 1)


class MemoryCount(TrainerCallback):
    """:class:`PeakMemory` as the training loop's callback (the engine always adds one; ``memory`` has the figures)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.memory: PeakMemory | None = None

    def on_train_begin(self, state: TrainerState) -> None:
        self.memory = PeakMemory(self.device, state.model, state.optimizer).__enter__()

    def on_optimizer_step(self, state: TrainerState) -> None:
        self.memory.step()

    def on_evaluate(self, state: TrainerState) -> None:
        self.memory.skip()

    def on_switch(self, state: TrainerState) -> None:
        self.memory.rebase(state.model, state.optimizer)

    def on_train_end(self, state: TrainerState) -> None:
        self.memory.__exit__(None, None, None)
