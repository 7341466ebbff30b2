"""Stateless math of associative-memory retrieval, shared by the models and the ``assocmem.nn`` layers.

Model B (KH eq. 13-16): one update ``v <- xi^T softmax(beta xi v)`` and its energy
``E = 1/2 v.v - (1/beta) logsumexp(beta xi v)``; with beta = 1/sqrt(d) the update is scaled
dot-product attention with keys = values = xi and query = v.
"""
from __future__ import annotations

import torch

__all__ = ["retrieve", "attention_weights", "modern_energy", "lse_energy"]


def attention_weights(query: torch.Tensor, keys: torch.Tensor, beta, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(beta * query @ keys^T) over the memory axis; ``mask`` True marks memories to ignore."""
    scores = torch.matmul(query, keys.transpose(-1, -2)) * beta
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def retrieve(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None, beta=1.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """One Model B update (KH eq. 16): ``softmax(beta q k^T) v``, with ``values = keys`` by default.

    Shapes: query (..., B, N), keys (..., K, N), values (..., K, M) -> (..., B, M).
    """
    values = keys if values is None else values
    return torch.matmul(attention_weights(query, keys, beta, mask), values)


def lse_energy(h: torch.Tensor, beta) -> torch.Tensor:
    """-(1/beta) logsumexp(beta h) over the last axis: the memory-layer part of KH eq. 13."""
    return -torch.logsumexp(h * beta, dim=-1) / beta


def modern_energy(state: torch.Tensor, keys: torch.Tensor, beta) -> torch.Tensor:
    """KH eq. (13) with inverse temperature beta: 1/2 v.v - (1/beta) logsumexp(beta xi v), shape (...)."""
    h = torch.matmul(state, keys.transpose(-1, -2))
    return 0.5 * (state * state).sum(-1) + lse_energy(h, beta)
