"""TopK SAE, the heads beside it (the paper's Neural Factorization Machine and its rivals), and the composite
models of the paper and its controls.

Everything works in the normaliser's space. Codes are sparse by construction: :class:`SparseCode` holds the
(indices, values) of the k active features, and the decoder and every head gather those k rows
(``embedding_bag`` / indexing), never a dense product over all F features. The SAE's encoder backward and
decoder can also run as dense products (``TopKSAE.kernels``, set from ``training.kernels``: a device may prefer
them); the other dense formulations (``*_dense``) exist for tests and benchmarks only.

What each kind is, trains and starts from is the one table :data:`featint.kinds.KINDS`; :func:`build_model`
builds any entry of it. All kinds are trained with one loss ``MSE(x, sae + linear + interaction)``.
"""

from __future__ import annotations

import abc
import json
import math
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
from featint.kinds import FROM_STANDARD, KINDS, MODEL_KINDS, SECONDARY_KIND
from featint.kinds import kind as kind_entry

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

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

    @property
    def width(self) -> int:
        """Entries per token: k for a TopK SAE; for a threshold SAE the most active latents of any token, the
        others padded with zero values (a zero entry adds nothing to the decoder, the heads or any count)."""
        return int(self.indices.shape[1])

    def pad(self, width: int, n_features: int) -> SparseCode:
        """The same code ``width`` entries wide: zero values appended at each token's lowest-numbered latents
        it does not use (distinct from its own, so :meth:`dense` stays exact)."""
        extra = width - self.width
        if extra <= 0:
            return self
        used = torch.zeros(self.indices.shape[0], n_features, dtype=torch.uint8, device=self.indices.device)
        used.scatter_(1, self.indices, 1)
        free = used.sort(dim=1, stable=True).indices[:, :extra]
        return SparseCode(torch.cat([self.indices, free], dim=1),
                          torch.cat([self.values, self.values.new_zeros(free.shape)], dim=1))

    @staticmethod
    def cat(codes: list[SparseCode], n_features: int) -> SparseCode:
        """The codes of consecutive token blocks as one, padded to the widest (threshold SAEs' blocks differ)."""
        width = max(code.width for code in codes)
        padded = [code.pad(width, n_features) for code in codes]
        return SparseCode(torch.cat([c.indices for c in padded]), torch.cat([c.values for c in padded]))


def active_code(acts: torch.Tensor) -> SparseCode:
    """The code of dense activations ``acts`` [N, F] (>= 0): each token's active latents in ascending order, then
    zero-valued padding up to the batch's largest count (at least one entry)."""
    width = max(1, int((acts > 0).sum(dim=1).max())) if acts.shape[0] else 1
    values, indices = acts.topk(width, dim=-1, sorted=False)
    inactive = values <= 0
    order = torch.where(inactive, indices + acts.shape[1], indices).argsort(dim=1)
    values = values.gather(1, order).masked_fill(inactive.gather(1, order), 0.0)
    return SparseCode(indices.gather(1, order), values)


def gather_sum(table: torch.Tensor, code: SparseCode) -> torch.Tensor:
    """sum_i values_i * table[indices_i]: the k active rows of ``table`` [F, m] -> [N, m]. The values take the
    table's dtype (under bf16 autocast they arrive in bfloat16 while the master weights stay float32)."""
    return F.embedding_bag(code.indices, table, per_sample_weights=code.values.to(table.dtype), mode="sum")


def _stride_for(n_features: int, k: int) -> int | None:
    """The number of candidate groups per latent block that minimises :func:`exact_topk`'s work (about
    ``F / s + k s`` elements through ``topk``, least at ``s = sqrt(F / k)``), among the divisors of ``F``; None
    when no blocking pays (the candidates would be more than half the row)."""
    best = round(math.sqrt(n_features / max(k, 1)))
    divisors = [s for s in range(2, 2 * best + 2) if n_features % s == 0 and k * s * 2 <= n_features]
    return min(divisors, key=lambda s: (abs(s - best), s)) if divisors else None


def exact_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pre.topk(k, dim=-1)`` over [N, F], exact (the same selected set up to ties), in about half the time on a
    CPU at the default shapes (F 4,608, k 92), each row's selection in ascending latent order.

    The order is canonical so that nothing downstream depends on which algorithm picked the set: the decoder
    sums the k rows in this order, and float sums in another order differ in the last bits (a CPU job and a
    GPU or simulated-GPU job of the same model would otherwise drift apart by rounding).

    The columns fall into ``B = F / s`` strided blocks {j, j + B, ..., j + (s - 1) B}. The k-th largest value t
    of a row has fewer than k elements above it, so fewer than k blocks hold a value above t, and each of the k
    blocks with the largest maxima holds a value >= t: every element of the top k lies in those k blocks. One
    ``topk`` over the B block maxima (an elementwise max of s contiguous slices, cheap) picks them; a second over
    their ``k s`` members gives the answer. On other devices (a GPU's ``topk`` is already fast) and at shapes
    where blocking does not pay it is ``torch.topk`` itself."""
    n, n_features = pre.shape
    s = _stride_for(n_features, k) if pre.device.type == "cpu" else None
    if s is None:
        values, indices = pre.topk(k, dim=-1, sorted=False)
    else:
        width = n_features // s
        pre = pre.contiguous()
        block_max = pre.view(n, s, width).amax(1)
        blocks = block_max.topk(k, dim=-1, sorted=False).indices
        offsets = torch.arange(0, n_features, width, device=pre.device).view(1, s, 1)
        columns = (blocks.unsqueeze(1) + offsets).reshape(n, s * k)
        values, position = pre.gather(1, columns).topk(k, dim=-1, sorted=False)
        indices = columns.gather(1, position)
    indices, order = indices.sort(dim=-1)  # [N, k] ints: ~2 ms at the default shapes, repaid by the decoder's locality
    return values.gather(1, order), indices


# ---------------------------------------------------------------------------------------------------------
# TopK SAE


class TopKEncoderFunction(torch.autograd.Function):
    """pre = x W^T + b; values, indices = TopK(pre) (and the AuxK selection), with a sparse backward.

    Only the selected pre-activations receive gradient, so the backward gathers the selected rows of W for
    dL/dx (``embedding_bag``) and multiplies a sparse [N, F] gradient by x for dL/dW: O(N k d) instead of the
    two dense O(N F d) products autograd would do through ``topk``."""

    @staticmethod
    def forward(ctx, x_in, W, b, k, aux_mask, k_aux, dense_backward=False):  # type: ignore[no-untyped-def, override]
        pre = torch.addmm(b, x_in, W.t())
        values, indices = exact_topk(pre, k)
        aux_values = aux_indices = None
        if aux_mask is not None and k_aux > 0:
            # Top k_aux among the dead columns only: cheaper than masking all F columns when few are dead.
            dead = aux_mask.nonzero().squeeze(1)
            aux_values, position = pre.index_select(1, dead).topk(min(k_aux, dead.numel()), dim=-1, sorted=False)
            aux_indices = dead[position]
            ctx.mark_non_differentiable(aux_indices)
        ctx.mark_non_differentiable(indices)
        ctx.dense_backward = dense_backward
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
        if ctx.dense_backward:  # the [N, F] gradient as a dense matrix: three dense products (GPUs may prefer them)
            # (scatter_add_: a latent both in the top k and AuxK's selection gets both gradients, as in the CSR)
            dense = torch.zeros(n, W.shape[0], dtype=grad.dtype, device=grad.device).scatter_add_(1, idx, grad)
            if ctx.needs_input_grad[0]:
                grad_x = dense @ W
            if ctx.needs_input_grad[1]:
                grad_W = dense.t() @ x_in
            if ctx.needs_input_grad[2]:
                grad_b = dense.sum(0)
            return grad_x, grad_W, grad_b, None, None, None, None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(idx, W, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # dL/dW = G^T x and dL/db = G^T 1 for the sparse [N, F] gradient G, as one sparse product with a
            # column of ones beside x: no scatter-add (index_add_ accumulates in a nondeterministic order on CUDA)
            crow = torch.arange(0, n * width + 1, width, device=idx.device)
            sparse_grad = torch.sparse_csr_tensor(crow, idx.reshape(-1), grad.reshape(-1), (n, W.shape[0]),
                                                  check_invariants=False)
            rhs = torch.cat([x_in, x_in.new_ones(n, 1)], dim=1) if ctx.needs_input_grad[2] else x_in
            product = sparse_grad.t() @ rhs
            if ctx.needs_input_grad[1]:
                grad_W = product[:, : x_in.shape[1]]
            if ctx.needs_input_grad[2]:
                grad_b = product[:, -1]
        return grad_x, grad_W, grad_b, None, None, None, None


#: The kernels each device takes for ``kernels: auto``: ``sparse`` (the encoder's backward through the k selected
#: pre-activations only, the decoder gathering k rows) or ``dense`` (both as products over all F latents). CPU:
#: sparse, 2.4x faster for the standard step and 1.5x for the joint one at the default shapes (d 576, F 4,608,
#: k 92, batch 1,024; bench_training's "dense kernels / sparse kernels"; dense wins only at toy widths such as
#: F 512). CUDA: sparse until benchmarks/gpu_check.py, which times both at the paper's shapes, says otherwise
#: (it has not run on a GPU yet).
KERNELS_BY_DEVICE = {"cpu": "sparse", "cuda": "sparse"}
KERNEL_CHOICES = ("auto", "sparse", "dense")


def resolve_kernels(choice: str, device: torch.device) -> str:
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, not {choice!r}")
    return KERNELS_BY_DEVICE.get(device.type, "sparse") if choice == "auto" else choice


class TopKSAE(nn.Module):
    """f = TopK_k(ReLU(W_enc (x - b_dec) + b_enc)); x_hat = W_dec^T f + b_dec.

    ``W_dec`` is stored as [F, d] (one row per feature) so decoding gathers rows. ``decoder_norm='unit'`` keeps
    rows at unit norm (call :meth:`project_decoder_grad` before and :meth:`normalise_decoder` after each
    optimiser step); ``'free'`` is the paper's unconstrained decoder (needed for the squared-norm analysis).
    """

    activation = "topk"  #: the activation of :data:`ACTIVATIONS` (a :class:`ThresholdSAE` sets its own)

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
        self.kernels = "auto"  #: sparse or dense products (:data:`KERNELS_BY_DEVICE`); a compute choice, not saved

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x - self.b_dec if self.pre_encoder_bias else x
        return F.linear(x_in, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor, k: int | None = None, aux_mask: torch.Tensor | None = None,
               k_aux: int = 0) -> tuple[SparseCode, SparseCode | None]:
        """The top-k code, and (for AuxK) the top ``k_aux`` code among latents where ``aux_mask`` is true.

        The encoder product is dense (every pre-activation is needed to pick the top k); its backward is
        sparse (:class:`TopKEncoderFunction`)."""
        x_in = x - self.b_dec if self.pre_encoder_bias else x
        dense = resolve_kernels(self.kernels, self.W_enc.device) == "dense"
        values, indices, aux_values, aux_indices = TopKEncoderFunction.apply(
            x_in, self.W_enc, self.b_enc, k or self.k, aux_mask, k_aux, dense)
        code = SparseCode(indices, F.relu(values))
        aux = SparseCode(aux_indices, F.relu(aux_values)) if aux_indices is not None else None
        return code, aux

    def encode_dense_reference(self, x: torch.Tensor, k: int | None = None) -> SparseCode:
        """Plain-autograd reference of :meth:`encode` (dense backward; tests and benchmarks only)."""
        values, indices = self.pre_activations(x).topk(k or self.k, dim=-1, sorted=False)
        return SparseCode(indices, F.relu(values))

    def decode(self, code: SparseCode) -> torch.Tensor:
        if resolve_kernels(self.kernels, self.W_dec.device) == "dense":
            return self.decode_dense(code.dense(self.n_features))
        return gather_sum(self.W_dec, code) + self.b_dec

    def decode_dense(self, f: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` as a product over all F latents (``kernels="dense"``; the tests' reference)."""
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

    def copy_as(self, decoder_norm: str, pre_encoder_bias: bool) -> TopKSAE:
        """An SAE of the same type, sizes and weights (on the same device) with another decoder constraint
        or pre-encoder bias setting (the caller adjusts ``b_enc`` when it changes the latter)."""
        copy = TopKSAE(self.d_model, self.n_features, self.k, decoder_norm, pre_encoder_bias)
        copy.to(self.W_enc.device).load_state_dict(self.state_dict())
        return copy

    def metadata(self) -> dict[str, Any]:
        """What :func:`sae_from_metadata` needs to rebuild this SAE (saved in the weights' metadata; a TopK
        SAE's has no ``activation``, as before threshold SAEs existed, so its metadata is what it was)."""
        return {"d_model": self.d_model, "n_features": self.n_features, "k": self.k,
                "decoder_norm": self.decoder_norm, "pre_encoder_bias": self.pre_encoder_bias}


#: SAE activations: ``topk`` (featint's own and every kind it trains) and the threshold activations of SAEs
#: researchers import (SAELens ``standard`` = ReLU, ``jumprelu``), whose number of active latents varies per token
ACTIVATIONS = ("topk", "relu", "jumprelu")


class ThresholdSAE(TopKSAE):
    """An imported ReLU or JumpReLU SAE: ``f = ReLU(pre)`` (``relu``) or ``f = ReLU(pre) * (pre > threshold)``
    (``jumprelu``, a per-latent threshold) with ``pre = W_enc (x - b_dec) + b_enc``; decoding as the TopK SAE.

    A token's number of active latents varies, so its code (:func:`active_code`) lists the active latents of
    each token and pads with zero values to the batch's largest count: the decoder, every head (the NFM's
    bi-interaction included: a zero entry adds nothing to either sum) and every count read the same code as
    for a TopK SAE. ``k`` is the cap on a code's width (``n_features``: none); ``encode(x, k)`` with a smaller
    k keeps each token's k largest activations, as ``sequential_truncated`` asks of any SAE. featint never
    trains one (the threshold is frozen: it is imported, and the kinds built on it freeze the encoder)."""

    def __init__(self, d_model: int, n_features: int, activation: str = "jumprelu", decoder_norm: str = "free",
                 pre_encoder_bias: bool = True) -> None:
        if activation not in ("relu", "jumprelu"):
            raise ValueError(f"a threshold SAE's activation is relu or jumprelu, not {activation!r}")
        super().__init__(d_model, n_features, n_features, decoder_norm, pre_encoder_bias)
        self.activation = activation
        self.threshold = nn.Parameter(torch.zeros(n_features), requires_grad=False)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The dense activations f [N, F]."""
        pre = self.pre_activations(x)
        acts = F.relu(pre)
        if self.activation == "jumprelu":
            acts = acts * (pre > self.threshold.to(pre.dtype))
        return acts

    def encode(self, x: torch.Tensor, k: int | None = None, aux_mask: torch.Tensor | None = None,
               k_aux: int = 0) -> tuple[SparseCode, SparseCode | None]:
        """The active latents of each token (no AuxK: a threshold SAE is never trained here)."""
        code = active_code(self.activations(x))
        if k is not None and k < code.width:
            code = active_code(code.top(k).dense(self.n_features))
        return code, None

    def encode_dense_reference(self, x: torch.Tensor, k: int | None = None) -> SparseCode:
        return self.encode(x, k)[0]

    def copy_as(self, decoder_norm: str, pre_encoder_bias: bool) -> ThresholdSAE:
        copy = ThresholdSAE(self.d_model, self.n_features, self.activation, decoder_norm, pre_encoder_bias)
        copy.to(self.W_enc.device).load_state_dict(self.state_dict())
        return copy

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "activation": self.activation}

    @staticmethod
    def n_parameters_for(d_model: int, n_features: int) -> int:
        return 2 * d_model * n_features + 2 * n_features + d_model


def sae_from_metadata(meta: dict[str, Any]) -> TopKSAE:
    """The SAE (weights to be loaded) that :meth:`TopKSAE.metadata` describes; weights written before
    threshold SAEs existed are TopK."""
    activation = meta.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise ShardError(f"unknown SAE activation {activation!r} in the weights' metadata; this version reads "
                         f"{ACTIVATIONS}")
    if activation == "topk":
        return TopKSAE(meta["d_model"], meta["n_features"], meta["k"], meta["decoder_norm"],
                       meta["pre_encoder_bias"])
    return ThresholdSAE(meta["d_model"], meta["n_features"], activation, meta["decoder_norm"],
                        meta["pre_encoder_bias"])


# ---------------------------------------------------------------------------------------------------------
# Heads: the part beside the SAE


@dataclass
class HeadOutput:
    linear: torch.Tensor | None  # [N, d]
    interaction: torch.Tensor | None  # [N, d]
    embedding: torch.Tensor | None  # [N, K], NFM only: post-first-Linear, pre-ReLU ("interaction embedding")


class Head(nn.Module, abc.ABC):
    """The linear term on the codes every head shares (W_lin f + b_lin, W_lin ~ N(0, linear_std^2)) and the
    interface of a head: ``forward(code, x) -> HeadOutput`` (``x`` the SAE's input, which only
    :class:`LinearInputHead` reads) and ``parameter_groups()`` (parameters per named part and term)."""

    kind_name = "head"

    def __init__(self, n_features: int, d_model: int, use_linear: bool, linear_std: float) -> None:
        super().__init__()
        self.use_linear, self.use_interaction = use_linear, False
        if use_linear:
            self.W_lin = nn.Parameter(torch.randn(n_features, d_model) * linear_std)
            self.b_lin = nn.Parameter(torch.zeros(d_model))

    def linear_term(self, code: SparseCode) -> torch.Tensor | None:
        return gather_sum(self.W_lin, code) + self.b_lin if self.use_linear else None

    def parameter_groups(self) -> list[tuple[str, str, int]]:
        """(part, term, parameters) per part; term is ``linear`` or ``interaction``."""
        return [("linear", "linear", self.W_lin.numel() + self.b_lin.numel())] if self.use_linear else []

    def config(self) -> dict[str, Any]:
        """What :meth:`from_config` needs to rebuild the head (saved in the weights' metadata)."""
        return {"type": self.kind_name, "use_linear": self.use_linear, "use_interaction": self.use_interaction}

    @classmethod
    @abc.abstractmethod
    def fresh(cls, n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool,
              use_interaction: bool) -> Head:
        """A freshly initialised head of this type (seed the RNG first); a rival sized to the NFM interaction
        pathway's parameter count at these sizes."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, n_features: int, d_model: int, config: dict[str, Any]) -> Head:
        """The head :meth:`config` describes, its weights to be loaded."""


class NFM(Head):
    """Neural Factorization Machine on sparse SAE codes (He & Chua, without batch norm).

    linear = W_lin^T f + b_lin; p = 0.5 * ((sum_i f_i v_i)^2 - sum_i (f_i v_i)^2);
    embedding = W1 Dropout(p) + b1; interaction = W2 ReLU(embedding) + b2.
    Init as the paper's code: V ~ N(0, 0.05^2), W_lin ~ N(0, 0.01^2), W1, W2 ~ N(0, 0.01^2), biases 0.
    """

    kind_name = "nfm"

    def __init__(self, n_features: int, d_model: int, embed_dim: int, dropout: float = 0.15,
                 use_linear: bool = True, use_interaction: bool = True, embedding_std: float = 0.05,
                 linear_std: float = 0.01, mlp_std: float = 0.01) -> None:
        super().__init__(n_features, d_model, use_linear, linear_std)
        self.use_interaction = use_interaction
        self.embed_dim, self.dropout_p = embed_dim, dropout
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

    def forward(self, code: SparseCode, x: torch.Tensor | None = None) -> HeadOutput:
        linear = self.linear_term(code)
        embedding = interaction = None
        if self.use_interaction:
            embedding = self.embedding_from_pooled(self.bi_interaction(code))
            interaction = self.interaction_from_embedding(embedding)
        return HeadOutput(linear, interaction, embedding)

    def forward_dense(self, f: torch.Tensor) -> HeadOutput:
        linear = f @ self.W_lin + self.b_lin if self.use_linear else None
        embedding = interaction = None
        if self.use_interaction:
            embedding = self.embedding_from_pooled(self.bi_interaction_dense(f))
            interaction = self.interaction_from_embedding(embedding)
        return HeadOutput(linear, interaction, embedding)

    def parameter_groups(self) -> list[tuple[str, str, int]]:
        groups = super().parameter_groups()
        if self.use_interaction:
            groups += [("nfm_embeddings", "interaction", self.V.numel()),
                       ("nfm_interaction_mlp", "interaction",
                        sum(p.numel() for p in (*self.mlp1.parameters(), *self.mlp2.parameters())))]
        return groups

    def config(self) -> dict[str, Any]:
        return {**super().config(), "embed_dim": self.embed_dim if self.use_interaction else 0,
                "dropout": float(self.dropout_p)}

    @classmethod
    def fresh(cls, n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool,
              use_interaction: bool) -> NFM:
        return cls(n_features, d_model, nfm.embed_dim, nfm.dropout, use_linear, use_interaction, nfm.embedding_std,
                   nfm.linear_std, nfm.mlp_std)

    @classmethod
    def from_config(cls, n_features: int, d_model: int, config: dict[str, Any]) -> NFM:
        return cls(n_features, d_model, max(1, config["embed_dim"]), config["dropout"], config["use_linear"],
                   config["use_interaction"])


def _output_layer(n_in: int, d_model: int, std: float) -> nn.Linear:
    """A head's last layer, initialised as the NFM's MLP: weights ~ N(0, std^2), bias 0."""
    layer = nn.Linear(n_in, d_model)
    nn.init.normal_(layer.weight, std=std)
    nn.init.zeros_(layer.bias)
    return layer


class PolyHead(Head):
    """Linear term + a low-rank quadratic on the codes (PolySAE's decoder term, pairwise products only):

    interaction = C^T (0.5 * ((U f) * (W f) + (W f) * (U f)) - sum_i f_i^2 u_i * w_i) + c
                = C^T ((U f) * (W f) - sum_i f_i^2 u_i * w_i) + c,

    i.e. sum_{i != j} f_i f_j (u_i * w_j) mapped by C: every pair of active features can add its own
    direction, of rank ``rank``. U, W ~ N(0, embedding_std^2), C ~ N(0, mlp_std^2), c = 0."""

    kind_name = "poly"

    def __init__(self, n_features: int, d_model: int, rank: int, use_linear: bool = True,
                 embedding_std: float = 0.05, linear_std: float = 0.01, mlp_std: float = 0.01) -> None:
        super().__init__(n_features, d_model, use_linear, linear_std)
        self.use_interaction, self.rank = True, rank
        self.U = nn.Parameter(torch.randn(n_features, rank) * embedding_std)
        self.W = nn.Parameter(torch.randn(n_features, rank) * embedding_std)
        self.out = _output_layer(rank, d_model, mlp_std)

    def quadratic(self, code: SparseCode) -> torch.Tensor:
        """(U f) * (W f) - sum_i f_i^2 u_i * w_i: the rank-space pairwise products, gathered over k rows."""
        squares = gather_sum(self.U * self.W, SparseCode(code.indices, code.values * code.values))
        return gather_sum(self.U, code) * gather_sum(self.W, code) - squares

    def quadratic_dense(self, f: torch.Tensor) -> torch.Tensor:
        """Dense reference of :meth:`quadratic` (tests only)."""
        return (f @ self.U) * (f @ self.W) - (f * f) @ (self.U * self.W)

    def forward(self, code: SparseCode, x: torch.Tensor | None = None) -> HeadOutput:
        return HeadOutput(self.linear_term(code), self.out(self.quadratic(code)), None)

    def parameter_groups(self) -> list[tuple[str, str, int]]:
        return super().parameter_groups() + [
            ("poly_factors", "interaction", self.U.numel() + self.W.numel()),
            ("poly_output", "interaction", sum(p.numel() for p in self.out.parameters()))]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rank": self.rank}

    @classmethod
    def fresh(cls, n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool,
              use_interaction: bool) -> PolyHead:
        return cls(n_features, d_model, matched_poly_rank(d_model, n_features, nfm.embed_dim), use_linear,
                   nfm.embedding_std, nfm.linear_std, nfm.mlp_std)

    @classmethod
    def from_config(cls, n_features: int, d_model: int, config: dict[str, Any]) -> PolyHead:
        return cls(n_features, d_model, config["rank"], config["use_linear"])


class MLPHead(Head):
    """Linear term + a one-hidden-layer MLP on the codes: interaction = W2 ReLU(W1^T f + b1) + b2, the first
    layer gathered over the k active rows of W1 [F, H]. W1 ~ N(0, embedding_std^2), W2 ~ N(0, mlp_std^2)."""

    kind_name = "mlp"

    def __init__(self, n_features: int, d_model: int, hidden: int, use_linear: bool = True,
                 embedding_std: float = 0.05, linear_std: float = 0.01, mlp_std: float = 0.01) -> None:
        super().__init__(n_features, d_model, use_linear, linear_std)
        self.use_interaction, self.hidden = True, hidden
        self.W1 = nn.Parameter(torch.randn(n_features, hidden) * embedding_std)
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.out = _output_layer(hidden, d_model, mlp_std)

    def forward(self, code: SparseCode, x: torch.Tensor | None = None) -> HeadOutput:
        hidden = F.relu(gather_sum(self.W1, code) + self.b1)
        return HeadOutput(self.linear_term(code), self.out(hidden), None)

    def parameter_groups(self) -> list[tuple[str, str, int]]:
        return super().parameter_groups() + [
            ("mlp_hidden", "interaction", self.W1.numel() + self.b1.numel()),
            ("mlp_output", "interaction", sum(p.numel() for p in self.out.parameters()))]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "hidden": self.hidden}

    @classmethod
    def fresh(cls, n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool,
              use_interaction: bool) -> MLPHead:
        return cls(n_features, d_model, matched_mlp_hidden(d_model, n_features, nfm.embed_dim), use_linear,
                   nfm.embedding_std, nfm.linear_std, nfm.mlp_std)

    @classmethod
    def from_config(cls, n_features: int, d_model: int, config: dict[str, Any]) -> MLPHead:
        return cls(n_features, d_model, config["hidden"], config["use_linear"])


class LinearInputHead(Head):
    """Linear term on the codes + a linear map of the SAE's input x: linear = W_lin^T f + b_lin + (x P) Q
    (rank ``rank``; ``rank = d`` stores one full d x d matrix instead). Both parts are linear, so the head
    reports them as one ``linear`` term. P, Q ~ N(0, linear_std^2) (full: A ~ N(0, linear_std^2))."""

    kind_name = "linear_input"

    def __init__(self, n_features: int, d_model: int, rank: int, linear_std: float = 0.01) -> None:
        super().__init__(n_features, d_model, True, linear_std)
        self.rank = min(rank, d_model)
        if self.rank == d_model:
            self.A = nn.Parameter(torch.randn(d_model, d_model) * linear_std)
        else:
            self.P = nn.Parameter(torch.randn(d_model, self.rank) * linear_std)
            self.Q = nn.Parameter(torch.randn(self.rank, d_model) * linear_std)

    def input_map(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "A"):
            return x @ self.A.to(x.dtype)
        return (x @ self.P.to(x.dtype)) @ self.Q.to(x.dtype)

    def forward(self, code: SparseCode, x: torch.Tensor | None = None) -> HeadOutput:
        if x is None:
            raise ValueError("the linear-input head reads the SAE's input x")
        linear = self.linear_term(code)
        assert linear is not None
        return HeadOutput(linear + self.input_map(x), None, None)

    def parameter_groups(self) -> list[tuple[str, str, int]]:
        size = self.A.numel() if hasattr(self, "A") else self.P.numel() + self.Q.numel()
        return super().parameter_groups() + [("input_map", "linear", size)]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "rank": self.rank}

    @classmethod
    def fresh(cls, n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool,
              use_interaction: bool) -> LinearInputHead:
        return cls(n_features, d_model, matched_input_rank(d_model, n_features, nfm.embed_dim), nfm.linear_std)

    @classmethod
    def from_config(cls, n_features: int, d_model: int, config: dict[str, Any]) -> LinearInputHead:
        return cls(n_features, d_model, config["rank"])


#: every head type by its name (the kinds table's ``head`` and the weights' ``head.type``): the one dispatch
HEADS: dict[str, type[Head]] = {cls.kind_name: cls for cls in (NFM, PolyHead, MLPHead, LinearInputHead)}


def nfm_interaction_parameter_count(d_model: int, n_features: int, embed_dim: int) -> int:
    """Parameters of the NFM's interaction pathway: V (F x K), MLP (K x K + K, K x d + d)."""
    K = embed_dim
    return n_features * K + (K * K + K) + (K * d_model + d_model)


def nfm_parameter_count(d_model: int, n_features: int, embed_dim: int) -> int:
    """Parameters of an NFM with both terms: linear W_lin, b_lin and the interaction pathway."""
    return (n_features * d_model + d_model) + nfm_interaction_parameter_count(d_model, n_features, embed_dim)


def matched_poly_rank(d_model: int, n_features: int, embed_dim: int) -> int:
    """Rank R of :class:`PolyHead` (2 F R + R d + d parameters) closest to the NFM interaction pathway's count."""
    target = nfm_interaction_parameter_count(d_model, n_features, embed_dim)
    return max(1, round((target - d_model) / (2 * n_features + d_model)))


def matched_mlp_hidden(d_model: int, n_features: int, embed_dim: int) -> int:
    """Hidden width H of :class:`MLPHead` (F H + H + H d + d parameters) closest to the NFM pathway's count."""
    target = nfm_interaction_parameter_count(d_model, n_features, embed_dim)
    return max(1, round((target - d_model) / (n_features + 1 + d_model)))


def matched_input_rank(d_model: int, n_features: int, embed_dim: int) -> int:
    """Rank r of :class:`LinearInputHead`'s map (2 d r parameters, or d^2 at full rank) closest to the NFM
    interaction pathway's count; full rank (d) when that is no more than the count."""
    target = nfm_interaction_parameter_count(d_model, n_features, embed_dim)
    if d_model * d_model <= target:
        return d_model
    return max(1, min(d_model, round(target / (2 * d_model))))


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

    def cpu(self) -> Reconstruction:
        """Every part on the CPU (the same tensors when they are there already)."""
        def host(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.cpu()

        return Reconstruction(self.code.to("cpu"), self.sae.cpu(), host(self.linear), host(self.interaction),
                              host(self.embedding), None if self.aux_code is None else self.aux_code.to("cpu"))

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
    """A TopK SAE with an optional head on its codes; ``kind`` names an entry of :data:`featint.kinds.KINDS`
    (or :data:`SECONDARY_KIND`)."""

    def __init__(self, kind: str, sae: TopKSAE, head: Head | None = None, infer_k: int | None = None) -> None:
        super().__init__()
        if kind not in KINDS and kind != SECONDARY_KIND:
            raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS} or {SECONDARY_KIND!r}")
        self.kind, self.sae, self.head = kind, sae, head
        self.infer_k = infer_k or sae.k

    @property
    def nfm(self) -> NFM | None:
        """The head when it is the paper's NFM (its geometry and interventions read V and the embedding)."""
        return self.head if isinstance(self.head, NFM) else None

    def forward(self, x: torch.Tensor, aux_mask: torch.Tensor | None = None, k_aux: int = 0,
                code: SparseCode | None = None) -> Reconstruction:
        """Reconstruct ``x``; ``code`` (frozen-encoder kinds: the cached code of ``x``, at least ``infer_k``
        wide) replaces the encoder."""
        if code is None:
            code, aux_code = self.sae.encode(x, self.infer_k, aux_mask, k_aux)
        else:
            if self.kind not in FROM_STANDARD:  # these never change their encoder: their codes can be cached
                raise ValueError(f"{self.kind} trains its encoder: its codes cannot be supplied")
            code, aux_code = code.top(self.infer_k), None
        sae_out = self.sae.decode(code)
        if self.head is None:
            return Reconstruction(code, sae_out, None, None, None, aux_code)
        out = self.head(code, x)
        return Reconstruction(code, sae_out, out.linear, out.interaction, out.embedding, aux_code)

    def forward_dense(self, x: torch.Tensor) -> Reconstruction:
        """Dense reference of :meth:`forward` for SAE-only and NFM models (tests and benchmarks only)."""
        code = self.sae.encode_dense_reference(x, self.infer_k)
        f = code.dense(self.sae.n_features)
        sae_out = self.sae.decode_dense(f)
        if self.head is None:
            return Reconstruction(code, sae_out, None, None, None)
        if self.nfm is None:
            raise ValueError(f"no dense reference for the {type(self.head).__name__} head")
        out = self.nfm.forward_dense(f)
        return Reconstruction(code, sae_out, out.linear, out.interaction, out.embedding)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the kind trains (the table's ``trains``): all, the head only, or the decoder only."""
        trains = KINDS[self.kind].trains if self.kind in KINDS else "all"
        if trains == "head":
            assert self.head is not None
            return iter(self.head.parameters())
        if trains == "decoder":
            return iter([self.sae.W_dec, self.sae.b_dec])
        return iter(self.parameters())

    def parameter_groups(self) -> list[tuple[str, str, int]]:
        """(part, term, parameters) for the SAE and each part of the head."""
        groups = [("sae", "sae", sum(p.numel() for p in self.sae.parameters()))]
        return groups + (self.head.parameter_groups() if self.head is not None else [])

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (the paper's breakdown for the NFM) and their ``total``."""
        counts = {part: n for part, _, n in self.parameter_groups()}
        counts["total"] = sum(counts.values())
        return counts


def param_matched_width(d_model: int, target_parameters: int) -> int:
    """Width F' of a TopK SAE (2 d F' + F' + d parameters) closest to ``target_parameters``."""
    return max(1, round((target_parameters - d_model) / (2 * d_model + 1)))


def joint_parameter_count(d_model: int, sae: SAESettings, nfm: NFMSettings) -> int:
    return TopKSAE.n_parameters_for(d_model, sae.n_features) + nfm_parameter_count(d_model, sae.n_features,
                                                                                   nfm.embed_dim)


def build_head(head: str, n_features: int, d_model: int, nfm: NFMSettings, use_linear: bool = True,
               use_interaction: bool = True) -> Head:
    """A fresh head of type ``head`` (the table's ``head``, :meth:`Head.fresh`)."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {sorted(HEADS)}")
    return HEADS[head].fresh(n_features, d_model, nfm, use_linear, use_interaction)


def build_model(kind: str, d_model: int, sae: SAESettings, nfm: NFMSettings,
                standard: FeatureModel | None = None) -> FeatureModel:
    """A fresh model of ``kind`` (seed the RNG first), as its table entry says; kinds that start from the
    standard SAE copy ``standard``'s SAE."""
    entry = kind_entry(kind)
    if entry.from_standard:
        if standard is None:
            raise ValueError(f"{kind} starts from a trained standard SAE")
        base = standard.sae
        if entry.trains == "decoder":
            # Fold the pre-encoder bias into b_enc (b_enc - W_enc b_dec) so that training b_dec refits the
            # decoder without moving the frozen encoder's input: the codes stay exactly the standard SAE's.
            copy = base.copy_as("free", pre_encoder_bias=False)
            if base.pre_encoder_bias:
                with torch.no_grad():
                    copy.b_enc -= base.W_enc @ base.b_dec
            return FeatureModel(kind, copy)
        copy = base.copy_as(base.decoder_norm, base.pre_encoder_bias)
        for parameter in copy.parameters():
            parameter.requires_grad_(False)
        infer_k = nfm.truncated_k if entry.infer_k == "truncated" else base.k
        head = build_head(entry.head, base.n_features, d_model, nfm, entry.linear, entry.interaction) \
            if entry.head is not None else None
        return FeatureModel(kind, copy, head, infer_k=infer_k)
    width = sae.n_features
    if entry.width == "param_matched":
        width = param_matched_width(d_model, joint_parameter_count(d_model, sae, nfm))
    primary = TopKSAE(d_model, width, sae.k, sae.decoder_norm, sae.pre_encoder_bias, sae.tied_init)
    if entry.head is None:
        return FeatureModel(kind, primary)
    return FeatureModel(kind, primary, build_head(entry.head, width, d_model, nfm, entry.linear, entry.interaction))


def model_metadata(model: FeatureModel) -> dict[str, Any]:
    sae = model.sae.metadata()
    shape = {name: sae.pop(name) for name in ("d_model", "n_features", "k")}  # the key order earlier files have
    return {
        "kind": model.kind, **shape, "infer_k": model.infer_k, **sae,
        "head": model.head.config() if model.head is not None else None,
    }


def _head_from_metadata(meta: dict[str, Any]) -> Head | None:
    config = meta.get("head")
    if config is None and meta.get("nfm") is not None:  # weights written before the heads were generalised
        config = {"type": "nfm", **meta["nfm"]}
    if config is None:
        return None
    if config["type"] not in HEADS:
        raise ShardError(f"unknown head type {config['type']!r} in the weights' metadata; this version reads "
                         f"{sorted(HEADS)}")
    return HEADS[config["type"]].from_config(meta["n_features"], meta["d_model"], config)


def save_model(model: FeatureModel, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Weights as safetensors, architecture (and ``extra``, e.g. the hook name) in its metadata."""
    meta = {"featint_model": json.dumps(model_metadata(model)), "extra": json.dumps(extra or {})}
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[FeatureModel, dict[str, Any]]:
    """(model in eval mode on ``device``, the ``extra`` metadata saved with it). The file is read on the CPU and
    the model moved once (reading straight onto a GPU would need safetensors' device support there)."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"model weights {path} do not exist; run the train rule for this model first.")
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        raw = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
    meta = json.loads(raw["featint_model"])
    sae = sae_from_metadata(meta)
    model = FeatureModel(meta["kind"], sae, _head_from_metadata(meta), infer_k=meta["infer_k"])
    if "head" not in meta:  # weights written before the heads were generalised keep the NFM under "nfm."
        tensors = {("head." + name[4:] if name.startswith("nfm.") else name): t for name, t in tensors.items()}
    model.load_state_dict(tensors)
    model.to(device).eval()
    return model, json.loads(raw.get("extra", "{}"))
