"""Behavioural metrics of a spliced model: per-token KL divergence and cross-entropy.

Log-probabilities over the full vocabulary are computed in float64 in chunks of tokens, so memory stays
bounded (49k-entry vocabularies make [tokens, vocab] tensors large).
"""

from __future__ import annotations

import torch


def kl_per_token(clean_logits: torch.Tensor, other_logits: torch.Tensor, chunk_tokens: int = 512) -> torch.Tensor:
    """KL(clean || other) per token, [..., vocab] -> [...] (float64, nats)."""
    if clean_logits.shape != other_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(clean_logits.shape)} vs {tuple(other_logits.shape)}")
    vocab = clean_logits.shape[-1]
    p_flat = clean_logits.reshape(-1, vocab)
    q_flat = other_logits.reshape(-1, vocab)
    out = torch.empty(p_flat.shape[0], dtype=torch.float64, device=clean_logits.device)
    for start in range(0, p_flat.shape[0], chunk_tokens):
        log_p = torch.log_softmax(p_flat[start : start + chunk_tokens].double(), dim=-1)
        log_q = torch.log_softmax(q_flat[start : start + chunk_tokens].double(), dim=-1)
        out[start : start + chunk_tokens] = (log_p.exp() * (log_p - log_q)).sum(-1)
    return out.reshape(clean_logits.shape[:-1])


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, chunk_tokens: int = 512) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, t + 1] from logits[:, t]; returns [B, T - 1] (float64, nats)."""
    vocab = logits.shape[-1]
    pred = logits[:, :-1, :].reshape(-1, vocab)
    target = tokens[:, 1:].reshape(-1)
    out = torch.empty(pred.shape[0], dtype=torch.float64, device=logits.device)
    for start in range(0, pred.shape[0], chunk_tokens):
        log_q = torch.log_softmax(pred[start : start + chunk_tokens].double(), dim=-1)
        out[start : start + chunk_tokens] = -log_q.gather(1, target[start : start + chunk_tokens, None]).squeeze(1)
    return out.reshape(tokens.shape[0], tokens.shape[1] - 1)
