"""TopK SAE, Neural Factorization Machine, and the composite models of the paper and its controls.

Everything works in the normaliser's space. Codes are sparse by construction: :class:`SparseCode` holds the
(indices, values) of the k active features, and the decoder, the NFM linear term and the bi-interaction
gather those k rows (``embedding_bag`` / indexing), never a dense product over all F features. The dense
formulations (``*_dense``) exist for tests and benchmarks only.

Composite models (:data:`MODEL_KINDS`), all trained with one loss ``MSE(x, sae + linear + interaction)``:

* ``standard``: TopK SAE alone.
* ``sequential``: the trained ``standard`` SAE frozen, an NFM fitted to its residual, SAE run at its own k.
* ``sequential_truncated``: as ``sequential`` but the SAE run at a smaller k (the paper's k=250-after-1024
  setting; a named ablation, not a baseline).
* ``joint``: SAE and NFM trained together from scratch.
* ``joint_no_interaction`` / ``joint_no_linear``: the joint model without one NFM term.
* ``standard_refit``: the trained ``standard`` SAE with its encoder frozen and its decoder (W_dec, b_dec, free
  norm) trained further for the same extra budget the NFM gets: what a re-learned decoder alone buys.
* ``param_matched``: a TopK SAE whose width gives it the joint model's parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

MODEL_KINDS: tuple[str, ...] = (
    "standard",
    "sequential",
    "sequential_truncated",
    "joint",
    "joint_no_interaction",
    "joint_no_linear",
    "standard_refit",
    "param_matched",
)
#: Models initialised from the trained ``standard`` SAE of the same seed.
FROM_STANDARD: tuple[str, ...] = ("sequential", "sequential_truncated", "standard_refit")
#: Models whose reconstruction can be split into SAE / linear / interaction parts.
WITH_NFM: tuple[str, ...] = ("sequential", "sequential_truncated", "joint", "joint_no_interaction", "joint_no_linear")


@dataclass
class SparseCode:
    """The k active features of each token: ``indices`` [N, k] (long) and ``values`` [N, k] (>= 0)."""

    indices: torch.Tensor
    values: torch.Tensor

    def dense(self, n_features: int) -> torch.Tensor:
        out = torch.zeros(self.values.shape[0], n_features, dtype=self.values.dtype, device=self.values.device)
        return out.scatter(1, self.indices, self.values)

    @property
    def l0(self) -> torch.Tensor:
        return (self.values > 0).sum(dim=1)


def gather_sum(table: torch.Tensor, code: SparseCode) -> torch.Tensor:
    """sum_i values_i * table[indices_i]: the k active rows of ``table`` [F, m] -> [N, m]."""
    return F.embedding_bag(code.indices, table, per_sample_weights=code.values, mode="sum")


# ---------------------------------------------------------------------------------------------------------
# TopK SAE


class TopKSAE(nn.Module):
    """f = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)); x_hat = W_dec^T f + b_dec.

    ``W_dec`` is stored as [F, d] (one row per feature) so decoding gathers rows. ``decoder_norm='unit'`` keeps
    rows at unit norm (call :meth:`project_decoder_grad` before and :meth:`normalise_decoder` after each
    optimiser step); ``'free'`` is the paper's unconstrained decoder (needed for the squared-norm analysis).
    """

    def __init__(self, d_model: int, n_features: int, k: int, decoder_norm: str = "free",
                 pre_encoder_bias: bool = True, tied_init: bool = True) -> None:
        super().__init__()
        if not 0 < k <= n_features:
            raise ValueError(f"k={k} must be in 1..n_features={n_features}")
        self.d_model, self.n_features, self.k = d_model, n_features, k
        self.decoder_norm, self.pre_encoder_bias = decoder_norm, pre_encoder_bias
        bound = 1.0 / n_features**0.5  # PyTorch's default init of Linear(F -> d), as the paper's decoder
        self.W_dec = nn.Parameter(torch.empty(n_features, d_model).uniform_(-bound, bound))
        if decoder_norm == "unit":
            with torch.no_grad():
                self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
        if tied_init:
            self.W_enc = nn.Parameter(self.W_dec.detach().clone())
        else:
            self.W_enc = nn.Parameter(torch.empty(n_features, d_model))
            nn.init.kaiming_uniform_(self.W_enc, a=5**0.5)
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x - self.b_dec if self.pre_encoder_bias else x
        return F.linear(x_in, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor, k: int | None = None) -> SparseCode:
        return self.encode_with_pre(x, k)[0]

    def encode_with_pre(self, x: torch.Tensor, k: int | None = None) -> tuple[SparseCode, torch.Tensor]:
        """The code and the pre-activations [N, F] it was selected from (AuxK reuses them)."""
        pre = self.pre_activations(x)
        values, indices = pre.topk(k or self.k, dim=-1, sorted=False)
        return SparseCode(indices, F.relu(values)), pre

    def decode(self, code: SparseCode) -> torch.Tensor:
        return gather_sum(self.W_dec, code) + self.b_dec

    def decode_dense(self, f: torch.Tensor) -> torch.Tensor:
        """Dense reference of :meth:`decode` (tests and benchmarks only)."""
        return f @ self.W_dec + self.b_dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        if self.decoder_norm == "unit":
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder row."""
        if self.decoder_norm == "unit" and self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    @staticmethod
    def n_parameters_for(d_model: int, n_features: int) -> int:
        return 2 * d_model * n_features + n_features + d_model


# ---------------------------------------------------------------------------------------------------------
# NFM


@dataclass
class NFMOutput:
    linear: torch.Tensor | None  # [N, d]
    interaction: torch.Tensor | None  # [N, d]
    embedding: torch.Tensor | None  # [N, K], post-first-Linear, pre-ReLU ("interaction embedding")


class NFM(nn.Module):
    """Neural Factorization Machine on sparse SAE codes (He & Chua, without batch norm).

    linear = W_lin^T f + b_lin; p = 0.5 * ((sum_i f_i v_i)^2 - sum_i (f_i v_i)^2);
    embedding = W1 Dropout(p) + b1; interaction = W2 ReLU(embedding) + b2.
    Init as the paper's code: V ~ N(0, 0.05^2), W_lin ~ N(0, 0.01^2), W1, W2 ~ N(0, 0.01^2), biases 0.
    """

    def __init__(self, n_features: int, d_model: int, embed_dim: int, dropout: float = 0.15,
                 use_linear: bool = True, use_interaction: bool = True, embedding_std: float = 0.05,
                 linear_std: float = 0.01, mlp_std: float = 0.01) -> None:
        super().__init__()
        self.use_linear, self.use_interaction = use_linear, use_interaction
        if use_linear:
            self.W_lin = nn.Parameter(torch.randn(n_features, d_model) * linear_std)
            self.b_lin = nn.Parameter(torch.zeros(d_model))
        if use_interaction:
            self.V = nn.Parameter(torch.randn(n_features, embed_dim) * embedding_std)
            self.mlp1 = nn.Linear(embed_dim, embed_dim)
            self.mlp2 = nn.Linear(embed_dim, d_model)
            for layer in (self.mlp1, self.mlp2):
                nn.init.normal_(layer.weight, std=mlp_std)
                nn.init.zeros_(layer.bias)
            self.dropout = nn.Dropout(dropout)

    def bi_interaction(self, code: SparseCode) -> torch.Tensor:
        fv = code.values.unsqueeze(-1) * self.V[code.indices]  # [N, k, K]: the k active rows only
        summed = fv.sum(dim=1)
        return 0.5 * (summed * summed - (fv * fv).sum(dim=1))

    def bi_interaction_dense(self, f: torch.Tensor) -> torch.Tensor:
        """Dense reference of :meth:`bi_interaction` (tests and benchmarks only)."""
        return 0.5 * ((f @ self.V) ** 2 - (f * f) @ (self.V * self.V))

    def embedding_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp1(self.dropout(pooled))

    def interaction_from_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.mlp2(F.relu(embedding))

    def forward(self, code: SparseCode) -> NFMOutput:
        linear = gather_sum(self.W_lin, code) + self.b_lin if self.use_linear else None
        embedding = interaction = None
        if self.use_interaction:
            embedding = self.embedding_from_pooled(self.bi_interaction(code))
            interaction = self.interaction_from_embedding(embedding)
        return NFMOutput(linear, interaction, embedding)

    def forward_dense(self, f: torch.Tensor) -> NFMOutput:
        linear = f @ self.W_lin + self.b_lin if self.use_linear else None
        embedding = interaction = None
        if self.use_interaction:
            embedding = self.embedding_from_pooled(self.bi_interaction_dense(f))
            interaction = self.interaction_from_embedding(embedding)
        return NFMOutput(linear, interaction, embedding)


# ---------------------------------------------------------------------------------------------------------
# Composite


@dataclass
class Reconstruction:
    code: SparseCode
    sae: torch.Tensor  # W_dec f + b_dec
    linear: torch.Tensor | None
    interaction: torch.Tensor | None
    embedding: torch.Tensor | None
    pre: torch.Tensor  # encoder pre-activations [N, F]

    @property
    def total(self) -> torch.Tensor:
        out = self.sae
        if self.linear is not None:
            out = out + self.linear
        if self.interaction is not None:
            out = out + self.interaction
        return out

    def component(self, name: str) -> torch.Tensor:
        """``sae``, ``sae+linear``, ``sae+interaction`` or ``full`` (missing parts count as zero)."""
        parts = {"sae": self.sae, "linear": self.linear, "interaction": self.interaction}
        if name == "full":
            return self.total
        out = self.sae
        for extra in name.split("+")[1:]:
            if parts[extra] is not None:
                out = out + parts[extra]
        return out


class FeatureModel(nn.Module):
    """A TopK SAE with an optional NFM on its codes; ``kind`` is one of :data:`MODEL_KINDS`."""

    def __init__(self, kind: str, sae: TopKSAE, nfm: NFM | None = None, infer_k: int | None = None) -> None:
        super().__init__()
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
        self.kind, self.sae, self.nfm = kind, sae, nfm
        self.infer_k = infer_k or sae.k

    def forward(self, x: torch.Tensor) -> Reconstruction:
        code, pre = self.sae.encode_with_pre(x, self.infer_k)
        sae_out = self.sae.decode(code)
        if self.nfm is None:
            return Reconstruction(code, sae_out, None, None, None, pre)
        out = self.nfm(code)
        return Reconstruction(code, sae_out, out.linear, out.interaction, out.embedding, pre)

    def forward_dense(self, x: torch.Tensor) -> Reconstruction:
        """Dense reference of :meth:`forward` (tests and benchmarks only)."""
        code, pre = self.sae.encode_with_pre(x, self.infer_k)
        f = code.dense(self.sae.n_features)
        sae_out = self.sae.decode_dense(f)
        if self.nfm is None:
            return Reconstruction(code, sae_out, None, None, None, pre)
        out = self.nfm.forward_dense(f)
        return Reconstruction(code, sae_out, out.linear, out.interaction, out.embedding, pre)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the kind trains: sequential kinds train the NFM only; the refit trains the decoder only."""
        if self.kind in ("sequential", "sequential_truncated"):
            assert self.nfm is not None
            return iter(self.nfm.parameters())
        if self.kind == "standard_refit":
            return iter([self.sae.W_dec, self.sae.b_dec])
        return iter(self.parameters())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, in the paper's breakdown."""
        counts = {"sae": sum(p.numel() for p in self.sae.parameters()), "nfm_linear": 0, "nfm_embeddings": 0,
                  "nfm_interaction_mlp": 0}
        if self.nfm is not None:
            if self.nfm.use_linear:
                counts["nfm_linear"] = self.nfm.W_lin.numel() + self.nfm.b_lin.numel()
            if self.nfm.use_interaction:
                counts["nfm_embeddings"] = self.nfm.V.numel()
                counts["nfm_interaction_mlp"] = sum(p.numel() for p in (*self.nfm.mlp1.parameters(),
                                                                          *self.nfm.mlp2.parameters()))
        counts["total"] = sum(counts.values())
        return counts


def param_matched_width(d_model: int, target_parameters: int) -> int:
    """Width F' of a TopK SAE (2 d F' + F' + d parameters) closest to ``target_parameters``."""
    return max(1, round((target_parameters - d_model) / (2 * d_model + 1)))
