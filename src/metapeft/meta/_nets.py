"""The meta-learners' networks: trained with torch, answered with numpy.

Training needs autograd; a recommendation does not, and importing torch costs a new process about as much as the
rest of ``metapeft recommend`` together (~1.3 s). So the weights live as numpy arrays on the meta-learners, a torch
module is built from them only to train, and each forward pass is written twice, once per library, with a test
holding the two equal. The arrays keep torch's ``state_dict`` names, so saved models read the same either way.
"""

from __future__ import annotations

import math

import numpy as np

Weights = dict[str, np.ndarray]


# --- numpy forward passes (inference) ------------------------------------------------------------------------
def embed(w: Weights, x: np.ndarray) -> np.ndarray:
    """``EmbeddingNet`` in numpy: Linear → tanh → Linear."""
    h = np.tanh(x @ w["layers.0.weight"].T + w["layers.0.bias"])
    return (h @ w["layers.2.weight"].T + w["layers.2.bias"]).astype(np.float32)


def ensemble(w: Weights, x: np.ndarray) -> np.ndarray:
    """``EnsembleNet`` in numpy: every member's mean outputs, (members, n, d_out)."""
    h = np.maximum(x @ w["w1"] + w["b1"], 0.0)  # (n, d) @ (k, d, h) broadcasts to (k, n, h) through BLAS
    h = np.maximum(h @ w["w2"] + w["b2"], 0.0)
    return (h @ w["w3"] + w["b3"]).astype(np.float32)


# --- torch modules (training) --------------------------------------------------------------------------------
def embedding_net(d_in: int, dim: int, weights: Weights | None = None, hidden: int = 32):
    from torch import nn

    class EmbeddingNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, dim))

        def forward(self, x):
            return self.layers(x)

    return _load(EmbeddingNet(), weights)


def ensemble_net(members: int, d_in: int, hidden: int, d_out: int, weights: Weights | None = None):
    """``members`` MLPs trained at once as one batched network (``torch.bmm``): about the cost of one."""
    import torch
    from torch import nn

    class EnsembleNet(nn.Module):
        def __init__(self):
            super().__init__()

            def weight(*shape):
                return nn.Parameter(torch.randn(members, *shape) * math.sqrt(2.0 / shape[0]))

            self.w1, self.b1 = weight(d_in, hidden), nn.Parameter(torch.zeros(members, 1, hidden))
            self.w2, self.b2 = weight(hidden, hidden), nn.Parameter(torch.zeros(members, 1, hidden))
            self.w3, self.b3 = weight(hidden, d_out), nn.Parameter(torch.zeros(members, 1, d_out))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(torch.einsum("nd,kdh->knh", x, self.w1) + self.b1)
            h = torch.relu(torch.bmm(h, self.w2) + self.b2)
            return torch.bmm(h, self.w3) + self.b3

    return _load(EnsembleNet(), weights)


def weights_of(net) -> Weights:
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def _load(net, weights: Weights | None):
    import torch

    if weights is not None:
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return net
