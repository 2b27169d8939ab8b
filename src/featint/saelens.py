"""Export a trained TopK SAE in SAELens's on-disk format, the normaliser folded into its weights.

SAELens (v6) saves an SAE as a folder holding ``sae_weights.safetensors`` (``W_enc`` [d_in, d_sae], ``W_dec``
[d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in]) and ``cfg.json`` (``architecture`` "topk", ``d_in``, ``d_sae``,
``k``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations`` and a
``meta`` block with ``model_name`` and ``hook_name``); its TopK SAE computes
``f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))`` and ``x_hat = f @ W_dec + b_dec`` on raw activations (field names
and formulas read from SAELens's ``sae_lens/saes/sae.py`` and ``topk_sae.py``).

featint's SAE works on normalised activations ``z = (x - m) * s`` (per dimension). The normaliser is affine, so it
folds exactly: ``W_dec' = W_dec / s`` (columns), ``b_dec' = b_dec / s + m``, ``W_enc' = (W_enc * s)^T`` and, with
the pre-encoder bias, ``b_enc' = b_enc`` (``(x - b_dec') W_enc' = W_enc (z - b_dec)``); without it,
``b_enc' = b_enc - W_enc (s * m)`` and ``apply_b_dec_to_input`` is false. The exported SAE applied to raw
activations gives featint's reconstruction, mapped back to raw space (tested).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from featint.errors import FeatintError
from featint.io import atomic_directory
from featint.kinds import SAE_ONLY
from featint.models import load_model
from featint.normaliser import Normaliser

WEIGHTS, CONFIG = "sae_weights.safetensors", "cfg.json"


class FoldedSAE(NamedTuple):
    """A trained SAE-only model with the normaliser folded in, as SAELens stores it."""

    state: dict[str, torch.Tensor]  #: W_enc [d, F], W_dec [F, d], b_enc, b_dec, float32, raw activation space
    fields: dict[str, Any]  #: the cfg.json fields that depend on the model (d_in, d_sae, k, apply_b_dec_to_input)
    kind: str  #: the featint kind it came from
    seed: int | None  #: its training seed


def folded_weights(weights_path: str | Path, normaliser: Normaliser) -> FoldedSAE:
    """The SAELens form of a trained SAE-only model (checked to be one, at its own k and hook)."""
    model, extra = load_model(weights_path)
    if model.kind not in SAE_ONLY:
        raise FeatintError(f"{weights_path} is a {model.kind} model: only SAE-only kinds (an SAE alone reconstructs "
                           "their output) have a SAELens equivalent.")
    sae = model.sae
    if model.infer_k != sae.k:
        raise FeatintError(f"{weights_path} runs its SAE at k = {model.infer_k}, not its own k = {sae.k}.")
    if extra.get("hook_name") not in (None, normaliser.hook_name):
        raise FeatintError(f"{weights_path} was trained at {extra['hook_name']}, the normaliser at "
                           f"{normaliser.hook_name}; export with the normaliser of the model's own run.")
    mean, scale = normaliser.mean.double(), normaliser.scale.double()
    W_enc, W_dec = sae.W_enc.detach().double(), sae.W_dec.detach().double()
    b_enc, b_dec = sae.b_enc.detach().double(), sae.b_dec.detach().double()
    W_enc_raw = (W_enc * scale[None, :]).T  # [d, F]
    if sae.pre_encoder_bias:
        b_enc_raw = b_enc
    else:
        b_enc_raw = b_enc - W_enc @ (scale * mean)
    state = {"W_enc": W_enc_raw, "W_dec": W_dec / scale[None, :], "b_enc": b_enc_raw, "b_dec": b_dec / scale + mean}
    fields = {"d_in": sae.d_model, "d_sae": sae.n_features, "k": sae.k, "apply_b_dec_to_input": sae.pre_encoder_bias}
    return FoldedSAE({name: tensor.float().contiguous() for name, tensor in state.items()}, fields, model.kind,
                     extra.get("seed"))


def export_saelens(weights_path: str | Path, normaliser_path: str | Path, out_dir: str | Path, model_name: str,
                   context_size: int | None = None) -> dict:
    """Stage entry point: write ``out_dir`` as a SAELens TopK SAE folder; returns its config."""
    normaliser = Normaliser.load(normaliser_path)
    folded = folded_weights(weights_path, normaliser)
    config = {
        "architecture": "topk", **folded.fields, "dtype": "float32", "device": "cpu", "normalize_activations": "none",
        "reshape_activations": "none",
        "meta": {"model_name": model_name, "hook_name": normaliser.hook_name, "context_size": context_size,
                 "prepend_bos": True, "exclude_special_tokens": False},
        "featint": {"source": str(weights_path), "kind": folded.kind, "seed": folded.seed,
                    "normaliser_folded": normaliser.kind,
                    "note": "position 0 (BOS) and massive-norm outliers were excluded from training"},
    }
    with atomic_directory(out_dir) as tmp:
        save_file(folded.state, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return config


def saelens_reconstruction(directory: str | Path, x: torch.Tensor) -> torch.Tensor:
    """SAELens's TopK forward on raw activations ``x``, from the exported files alone (the reference the export
    is tested against): ``f = ReLU(TopK((x - b_dec * apply) @ W_enc + b_enc))``, ``x_hat = f @ W_dec + b_dec``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    w = load_file(str(directory / WEIGHTS))
    sae_in = x - w["b_dec"] * float(cfg["apply_b_dec_to_input"])
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    top = pre.topk(int(cfg["k"]), dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    return acts @ w["W_dec"] + w["b_dec"]


#: Kinds the workflow exports: the SAE-only kinds, whose reconstruction is their SAE's.
EXPORTED_KINDS: tuple[str, ...] = SAE_ONLY
