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

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from featint.config import NFMSettings, SAESettings
from featint.errors import ShardError
from featint.io import atomic_path

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

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
#: A TopK SAE trained on another model's NFM interaction embedding (the intervention stage).
SECONDARY_KIND = "secondary"
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

    def top(self, k: int) -> SparseCode:
        """The ``k`` largest of each token's codes (the code a top-k encoder gives at a smaller k)."""
        if k >= self.indices.shape[1]:
            return self
        values, position = self.values.topk(k, dim=-1, sorted=False)
        return SparseCode(self.indices.gather(1, position), values)

    def to(self, device: torch.device | str) -> SparseCode:
        return SparseCode(self.indices.to(device), self.values.to(device))


def gather_sum(table: torch.Tensor, code: SparseCode) -> torch.Tensor:
    """sum_i values_i * table[indices_i]: the k active rows of ``table`` [F, m] -> [N, m]. The values take the
    table's dtype (under bf16 autocast they arrive in bfloat16 while the master weights stay float32)."""
    return F.embedding_bag(code.indices, table, per_sample_weights=code.values.to(table.dtype), mode="sum")


# ---------------------------------------------------------------------------------------------------------
# TopK SAE


class TopKEncoderFunction(torch.autograd.Function):
    """pre = x W^T + b; values, indices = TopK(pre) (and the AuxK selection), with a sparse backward.

    Only the selected pre-activations receive gradient, so the backward gathers the selected rows of W for
    dL/dx (``embedding_bag``) and multiplies a sparse [N, F] gradient by x for dL/dW: O(N k d) instead of the
    two dense O(N F d) products autograd would do through ``topk``."""

    @staticmethod
    def forward(ctx, x_in, W, b, k, aux_mask, k_aux):  # type: ignore[no-untyped-def, override]
        pre = torch.addmm(b, x_in, W.t())
        values, indices = pre.topk(k, dim=-1, sorted=False)
        aux_values = aux_indices = None
        if aux_mask is not None and k_aux > 0:
            # Top k_aux among the dead columns only: cheaper than masking all F columns when few are dead.
            dead = aux_mask.nonzero().squeeze(1)
            aux_values, position = pre.index_select(1, dead).topk(min(k_aux, dead.numel()), dim=-1, sorted=False)
            aux_indices = dead[position]
            ctx.mark_non_differentiable(aux_indices)
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(x_in, W, indices, aux_indices if aux_indices is not None else indices[:, :0])
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices, grad_aux_values, _grad_aux_indices):  # type: ignore[no-untyped-def, override]
        x_in, W, indices, aux_indices = ctx.saved_tensors
        if grad_aux_values is not None and aux_indices.shape[1] > 0:
            grad = torch.cat([grad_values, grad_aux_values.to(grad_values.dtype)], dim=1)
            idx = torch.cat([indices, aux_indices], dim=1)
        else:
            grad, idx = grad_values, indices
        # gradients accumulate in the master weights' dtype (bf16 autocast hands bfloat16 grads back)
        grad = grad.to(W.dtype).contiguous()
        x_in = x_in.to(W.dtype)
        n, width = idx.shape
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, W, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:
            crow = torch.arange(0, n * width + 1, width, device=idx.device)
            sparse_grad = torch.sparse_csr_tensor(crow, idx.reshape(-1), grad.reshape(-1), (n, W.shape[0]),
                                                  check_invariants=False)
            grad_W = sparse_grad.t() @ x_in
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W.shape[0], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_W, grad_b, None, None, None


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

    def encode(self, x: torch.Tensor, k: int | None = None, aux_mask: torch.Tensor | None = None,
               k_aux: int = 0) -> tuple[SparseCode, SparseCode | None]:
        """The top-k code, and (for AuxK) the top ``k_aux`` code among latents where ``aux_mask`` is true.

        The encoder product is dense (every pre-activation is needed to pick the top k); its backward is
        sparse (:class:`TopKEncoderFunction`)."""
        x_in = x - self.b_dec if self.pre_encoder_bias else x
        values, indices, aux_values, aux_indices = TopKEncoderFunction.apply(
            x_in, self.W_enc, self.b_enc, k or self.k, aux_mask, k_aux)
        code = SparseCode(indices, F.relu(values))
        aux = SparseCode(aux_indices, F.relu(aux_values)) if aux_indices is not None else None
        return code, aux

    def encode_dense_reference(self, x: torch.Tensor, k: int | None = None) -> SparseCode:
        """Plain-autograd reference of :meth:`encode` (dense backward; tests and benchmarks only)."""
        values, indices = self.pre_activations(x).topk(k or self.k, dim=-1, sorted=False)
        return SparseCode(indices, F.relu(values))

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
        """Both sums gather the k active rows: sum_i f_i v_i from V, sum_i f_i^2 v_i^2 from V*V."""
        summed = gather_sum(self.V, code)
        squares = gather_sum(self.V * self.V, SparseCode(code.indices, code.values * code.values))
        return 0.5 * (summed * summed - squares)

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
    aux_code: SparseCode | None = None  # AuxK selection among dead latents (training only)

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
        if kind not in MODEL_KINDS and kind != SECONDARY_KIND:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS} or {SECONDARY_KIND!r}")
        self.kind, self.sae, self.nfm = kind, sae, nfm
        self.infer_k = infer_k or sae.k

    @property
    def encoder_frozen(self) -> bool:
        """The kind never changes its encoder (nor the encoder's input): its codes can be cached."""
        return self.kind in FROM_STANDARD

    def forward(self, x: torch.Tensor, aux_mask: torch.Tensor | None = None, k_aux: int = 0,
                code: SparseCode | None = None) -> Reconstruction:
        """Reconstruct ``x``; ``code`` (frozen-encoder kinds: the cached code of ``x``, at least ``infer_k``
        wide) replaces the encoder."""
        if code is None:
            code, aux_code = self.sae.encode(x, self.infer_k, aux_mask, k_aux)
        else:
            if not self.encoder_frozen:
                raise ValueError(f"{self.kind} trains its encoder: its codes cannot be supplied")
            code, aux_code = code.top(self.infer_k), None
        sae_out = self.sae.decode(code)
        if self.nfm is None:
            return Reconstruction(code, sae_out, None, None, None, aux_code)
        out = self.nfm(code)
        return Reconstruction(code, sae_out, out.linear, out.interaction, out.embedding, aux_code)

    def forward_dense(self, x: torch.Tensor) -> Reconstruction:
        """Dense reference of :meth:`forward` (tests and benchmarks only)."""
        code = self.sae.encode_dense_reference(x, self.infer_k)
        f = code.dense(self.sae.n_features)
        sae_out = self.sae.decode_dense(f)
        if self.nfm is None:
            return Reconstruction(code, sae_out, None, None, None)
        out = self.nfm.forward_dense(f)
        return Reconstruction(code, sae_out, out.linear, out.interaction, out.embedding)

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


def nfm_parameter_count(d_model: int, n_features: int, embed_dim: int) -> int:
    """Parameters of an NFM with both terms: linear W_lin, b_lin; embeddings V; MLP (K x K + K, K x d + d)."""
    F_, K = n_features, embed_dim
    return (F_ * d_model + d_model) + F_ * K + (K * K + K) + (K * d_model + d_model)


def joint_parameter_count(d_model: int, sae: SAESettings, nfm: NFMSettings) -> int:
    return TopKSAE.n_parameters_for(d_model, sae.n_features) + nfm_parameter_count(d_model, sae.n_features,
                                                                                   nfm.embed_dim)


def build_model(kind: str, d_model: int, sae: SAESettings, nfm: NFMSettings,
                standard: FeatureModel | None = None) -> FeatureModel:
    """A fresh model of ``kind`` (seed the RNG first). Kinds in :data:`FROM_STANDARD` copy ``standard``'s SAE."""
    if kind in FROM_STANDARD:
        if standard is None:
            raise ValueError(f"{kind} starts from a trained standard SAE")
        base = standard.sae
        if kind == "standard_refit":
            # Fold the pre-encoder bias into b_enc (b_enc - W_enc b_dec) so that training b_dec refits the
            # decoder without moving the frozen encoder's input: the codes stay exactly the standard SAE's.
            copy = TopKSAE(d_model, base.n_features, base.k, "free", pre_encoder_bias=False)
            copy.load_state_dict(base.state_dict())
            if base.pre_encoder_bias:
                with torch.no_grad():
                    copy.b_enc -= base.W_enc @ base.b_dec
            return FeatureModel(kind, copy)
        copy = TopKSAE(d_model, base.n_features, base.k, base.decoder_norm, base.pre_encoder_bias)
        copy.load_state_dict(base.state_dict())
        for parameter in copy.parameters():
            parameter.requires_grad_(False)
        infer_k = nfm.truncated_k if kind == "sequential_truncated" else base.k
        return FeatureModel(kind, copy, _nfm(base.n_features, d_model, nfm), infer_k=infer_k)
    width = sae.n_features
    if kind == "param_matched":
        width = param_matched_width(d_model, joint_parameter_count(d_model, sae, nfm))
    primary = TopKSAE(d_model, width, sae.k, sae.decoder_norm, sae.pre_encoder_bias, sae.tied_init)
    if kind in ("standard", "param_matched"):
        return FeatureModel(kind, primary)
    return FeatureModel(kind, primary, _nfm(width, d_model, nfm, use_linear=kind != "joint_no_linear",
                                           use_interaction=kind != "joint_no_interaction"))


def _nfm(n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool = True,
         use_interaction: bool = True) -> NFM:
    return NFM(n_features, d_model, nfm.embed_dim, nfm.dropout, use_linear, use_interaction, nfm.embedding_std,
               nfm.linear_std, nfm.mlp_std)


def model_metadata(model: FeatureModel) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "kind": model.kind, "d_model": model.sae.d_model, "n_features": model.sae.n_features, "k": model.sae.k,
        "infer_k": model.infer_k, "decoder_norm": model.sae.decoder_norm,
        "pre_encoder_bias": model.sae.pre_encoder_bias, "nfm": None,
    }
    if model.nfm is not None:
        embed_dim = model.nfm.V.shape[1] if model.nfm.use_interaction else 0
        dropout = model.nfm.dropout.p if model.nfm.use_interaction else 0.0
        meta["nfm"] = {"embed_dim": int(embed_dim), "dropout": float(dropout), "use_linear": model.nfm.use_linear,
                       "use_interaction": model.nfm.use_interaction}
    return meta


def save_model(model: FeatureModel, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Weights as safetensors, architecture (and ``extra``, e.g. the hook name) in its metadata."""
    meta = {"featint_model": json.dumps(model_metadata(model)), "extra": json.dumps(extra or {})}
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[FeatureModel, dict[str, Any]]:
    """(model in eval mode, the ``extra`` metadata saved with it)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"model weights {path} do not exist; run the train rule for this model first.")
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        raw = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
    meta = json.loads(raw["featint_model"])
    sae = TopKSAE(meta["d_model"], meta["n_features"], meta["k"], meta["decoder_norm"], meta["pre_encoder_bias"])
    nfm = None
    if meta["nfm"] is not None:
        n = meta["nfm"]
        nfm = NFM(meta["n_features"], meta["d_model"], max(1, n["embed_dim"]), n["dropout"], n["use_linear"],
                  n["use_interaction"])
    model = FeatureModel(meta["kind"], sae, nfm, infer_k=meta["infer_k"])
    model.load_state_dict(tensors)
    model.to(device).eval()
    return model, json.loads(raw.get("extra", "{}"))
