"""The one normaliser: fitted once on train activations, saved beside the shards, applied by every consumer.

``x' = (x - mean) * scale`` and its inverse ``x = x' / scale + mean``. Two kinds:

* ``zscore``: per-dimension mean and 1/std (std floored at ``min_std``), the paper's scheme fitted once on
  the train split instead of per buffer;
* ``scalar``: mean 0 and one scale so that E||x'|| = sqrt(d) (SAELens-style, no centring).

Both kinds also keep ``raw_mean``, the per-dimension train mean in raw space (the mean-ablation reference
of the behavioural evaluation).

The author's code recomputed statistics per buffer, never saved them and fed raw activations to models
trained on z-scored ones (PAPER_SPEC section 10, item 1). Here there is one object, saved once, and the
splice and every evaluation load it from the same file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from featint.errors import ShardError
from featint.io import atomic_path


@dataclass(frozen=True)
class Normaliser:
    kind: str
    mean: torch.Tensor  # [d], float32
    scale: torch.Tensor  # [d], float32 (multiplier)
    n_tokens: int
    hook_name: str
    raw_mean: torch.Tensor  # [d], float32: train mean in raw space, whatever the kind

    @property
    def d_model(self) -> int:
        return int(self.mean.numel())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw activations -> normalised space (any leading shape, last dim d)."""
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        scale = self.scale.to(device=x.device, dtype=x.dtype)
        return (x - mean) * scale

    def invert(self, x_normalised: torch.Tensor) -> torch.Tensor:
        """Normalised space -> raw activations."""
        mean = self.mean.to(device=x_normalised.device, dtype=x_normalised.dtype)
        scale = self.scale.to(device=x_normalised.device, dtype=x_normalised.dtype)
        return x_normalised / scale + mean

    @classmethod
    def fit(
        cls, batches: Iterable[torch.Tensor], kind: str, hook_name: str, min_std: float = 1e-6
    ) -> Normaliser:
        """Fit from a stream of [n, d] batches in one pass (float64 accumulators)."""
        count = 0
        total: torch.Tensor | None = None
        total_sq: torch.Tensor | None = None
        norm_sum = 0.0
        for batch in batches:
            if batch.numel() == 0:
                continue
            b = batch.to(torch.float64)
            if total is None:
                total = torch.zeros(b.shape[1], dtype=torch.float64)
                total_sq = torch.zeros(b.shape[1], dtype=torch.float64)
            total += b.sum(0)
            total_sq += (b * b).sum(0)  # type: ignore[operator]
            norm_sum += float(b.norm(dim=1).sum())
            count += b.shape[0]
        if count < 2 or total is None or total_sq is None:
            raise ShardError(f"cannot fit a normaliser on {count} token(s); the train selection is empty.")
        d = total.numel()
        raw_mean = total / count
        if kind == "zscore":
            mean = raw_mean
            var = (total_sq / count - mean * mean).clamp_min(0.0) * count / (count - 1)
            scale = 1.0 / var.sqrt().clamp_min(min_std)
        elif kind == "scalar":
            mean = torch.zeros(d, dtype=torch.float64)
            scale = torch.full((d,), d**0.5 / (norm_sum / count), dtype=torch.float64)
        else:
            raise ValueError(f"unknown normaliser kind {kind!r}")
        return cls(kind, mean.float(), scale.float(), count, hook_name, raw_mean.float())

    def save(self, path: str | Path) -> None:
        meta = {"kind": self.kind, "n_tokens": str(self.n_tokens), "hook_name": self.hook_name}
        with atomic_path(path) as tmp:
            tensors = {"mean": self.mean.contiguous(), "scale": self.scale.contiguous(),
                       "raw_mean": self.raw_mean.contiguous()}
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> Normaliser:
        path = Path(path)
        if not path.is_file():
            raise ShardError(f"normaliser file {path} does not exist; run the fit_normaliser rule first.")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(path))
        if "raw_mean" not in tensors:
            if meta["kind"] != "zscore":
                raise ShardError(f"normaliser file {path} predates the stored raw train mean; refit it "
                                 "(snakemake --forcerun fit_normaliser, or python -m featint normaliser).")
            tensors["raw_mean"] = tensors["mean"]
        return cls(
            kind=meta["kind"],
            mean=tensors["mean"],
            scale=tensors["scale"],
            n_tokens=int(meta["n_tokens"]),
            hook_name=meta["hook_name"],
            raw_mean=tensors["raw_mean"],
        )

    def describe(self) -> str:
        return json.dumps({"kind": self.kind, "n_tokens": self.n_tokens, "hook": self.hook_name, "d": self.d_model})
