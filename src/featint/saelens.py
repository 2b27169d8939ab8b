"""SAELens's on-disk format: export a trained TopK SAE with the normaliser folded into its weights, and import a
SAELens TopK SAE as a run's standard model (the fold undone for the run's normaliser).

SAELens (v6) saves an SAE as a folder holding ``sae_weights.safetensors`` (``W_enc`` [d_in, d_sae], ``W_dec``
[d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in]) and ``cfg.json`` (``architecture`` "topk", ``d_in``, ``d_sae``,
``k``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations`` and a
``metadata`` block with ``sae_lens_version``, ``model_name`` and ``hook_name``; a config without a version is read as
the pre-6.0 format, with those fields at the top level); its TopK SAE computes
``f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))`` and ``x_hat = f @ W_dec + b_dec`` on raw activations (field names
and formulas read from SAELens's ``sae_lens/saes/sae.py``, ``topk_sae.py`` and
``loading/pretrained_sae_loaders.py``; the export is loaded by ``SAE.load_from_disk`` of SAELens
:data:`SAELENS_VERSION` in a test).

featint's SAE works on normalised activations ``z = (x - m) * s`` (per dimension). The normaliser is affine, so it
folds exactly: ``W_dec' = W_dec / s`` (columns), ``b_dec' = b_dec / s + m``, ``W_enc' = (W_enc * s)^T`` and, with
the pre-encoder bias, ``b_enc' = b_enc`` (``(x - b_dec') W_enc' = W_enc (z - b_dec)``); without it,
``b_enc' = b_enc - W_enc (s * m)`` and ``apply_b_dec_to_input`` is false. The exported SAE applied to raw
activations gives featint's reconstruction, mapped back to raw space (tested).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from featint.errors import FeatintError
from featint.io import atomic_directory
from featint.kinds import SAE_ONLY
from featint.layout import (
    SAELENS_CONFIG,
    SAELENS_WEIGHTS,
    SPARSIFY_CONFIG,
    SPARSIFY_WEIGHTS,
    ActivationsFolder,
    ModelFolder,
)
from featint.models import TopKSAE, load_model
from featint.normaliser import Normaliser
from featint.tables import PARAMETERS, write_table

WEIGHTS, CONFIG = SAELENS_WEIGHTS, SAELENS_CONFIG
#: The SAELens release whose on-disk format the export writes and whose loader the tests run on it.
SAELENS_VERSION = "6.54.12"


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
        "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": None,
                     "model_name": model_name, "hook_name": normaliser.hook_name, "hook_head_index": None,
                     "context_size": context_size, "prepend_bos": True, "exclude_special_tokens": False},
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


# ---------------------------------------------------------------------------------------------------------
# Import: a SAELens TopK SAE as the run's standard model


def read_saelens(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg.json, float32 weights) of a SAELens SAE folder, checked to be a TopK SAE on raw activations."""

    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FeatintError(f"{directory} has no {name}; sae.path must be a SAELens SAE folder "
                               f"({CONFIG} + {WEIGHTS}), e.g. one written by `featint export-saelens`.")
    cfg = saelens_config(json.loads((directory / CONFIG).read_text(encoding="utf-8")))
    architecture = cfg["architecture"]
    if architecture != "topk":
        raise FeatintError(f"{directory / CONFIG}: architecture is {architecture!r}; featint imports TopK SAEs "
                           "(architecture topk) only: SAELens's standard (ReLU) and jumprelu SAEs activate a varying "
                           "number of latents per token, which featint's codes do not hold yet.")
    if "k" not in cfg:
        raise FeatintError(f"{directory / CONFIG}: a topk SAE without k (nor activation_fn_kwargs.k).")
    for key in ("normalize_activations", "reshape_activations"):
        if cfg.get(key) not in (None, "none"):
            raise FeatintError(f"{directory / CONFIG}: {key} is {cfg[key]!r}; featint imports SAEs that read raw "
                               "activations (\"none\") and applies its own normaliser around them.")
    weights = _float_weights(directory / WEIGHTS, ("W_enc", "W_dec", "b_enc", "b_dec"))
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    if tuple(weights["W_enc"].shape) != (d_in, d_sae) or tuple(weights["W_dec"].shape) != (d_sae, d_in):
        raise FeatintError(f"{directory}: weight shapes W_enc {tuple(weights['W_enc'].shape)}, W_dec "
                           f"{tuple(weights['W_dec'].shape)} do not match d_in {d_in}, d_sae {d_sae} of {CONFIG}.")
    return cfg, weights


def _float_weights(path: Path, required: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path`` in float32; one lacking any of ``required`` is an error."""
    from safetensors.torch import load_file

    weights = {name: tensor.float() for name, tensor in load_file(str(path)).items()}
    missing = set(required) - set(weights)
    if missing:
        raise FeatintError(f"{path} lacks {sorted(missing)}.")
    return weights


#: the keys SAELens 6 renamed (its ``handle_pre_6_0_config``)
_PRE_6_RENAMES = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
                  "activation_fn_str": "activation_fn"}


def saelens_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A SAELens ``cfg.json`` in the 6.x form, as SAELens's own loader reads it: a config written before 6.0
    (no ``sae_lens_version`` of 6 or later, at the top level or in ``metadata``) has ``hook_point`` for
    ``hook_name``, defaults ``architecture`` to ``standard`` and ``apply_b_dec_to_input`` to true, gives a
    topk SAE's k in ``activation_fn_kwargs``, and may store ``normalize_activations`` as a bool (false =
    ``none``, true = ``expected_average_only_in``)."""
    cfg = dict(raw)
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if version is None or int(str(version).split(".")[0]) < 6:
        cfg = {_PRE_6_RENAMES.get(key, key): value for key, value in cfg.items()}
        cfg.setdefault("architecture", "standard")
        cfg.setdefault("apply_b_dec_to_input", True)
        if cfg["architecture"] == "topk" and "k" not in cfg and "k" in (cfg.get("activation_fn_kwargs") or {}):
            cfg["k"] = cfg["activation_fn_kwargs"]["k"]
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    cfg.setdefault("architecture", "standard")
    return cfg


def read_sparsify(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An EleutherAI sparsify folder (one hookpoint: ``cfg.json`` + ``sae.safetensors``, as
    ``SparseCoder.save_to_disk`` writes it) in SAELens's terms: (cfg with ``d_in``, ``d_sae``, ``k``,
    ``apply_b_dec_to_input`` and ``hook_point`` = the folder's name; float32 ``W_enc`` [d_in, F], ``b_enc``,
    ``W_dec`` [F, d_in], ``b_dec``). sparsify's TopK encodes ``TopK(ReLU((x - b_dec) W^T + b))``: the same
    reconstruction as featint's ``ReLU(TopK(...))``. Only TopK SAEs on their own input are read."""

    directory = Path(directory)
    for name in (SPARSIFY_CONFIG, SPARSIFY_WEIGHTS):
        if not (directory / name).is_file():
            raise FeatintError(f"{directory} has no {name}; with sae.source sparsify, sae.path must be one "
                               f"hookpoint's folder of a sparsify run ({SPARSIFY_CONFIG} + {SPARSIFY_WEIGHTS}, e.g. "
                               "<release>/layers.6).")
    raw = json.loads((directory / SPARSIFY_CONFIG).read_text(encoding="utf-8"))
    where = directory / SPARSIFY_CONFIG
    if raw.get("activation", "topk") != "topk":
        raise FeatintError(f"{where}: activation is {raw['activation']!r}; featint imports sparsify's TopK SAEs only.")
    for key, what in (("transcode", "a transcoder (it predicts another hookpoint's output)"),
                      ("skip_connection", "a skip connection (W_skip)")):
        if raw.get(key):
            raise FeatintError(f"{where}: {key} is true: {what} is not an SAE of one activation; featint imports "
                               "plain TopK SAEs.")
    weights = _float_weights(directory / SPARSIFY_WEIGHTS, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    d_in = int(raw["d_in"])
    d_sae = int(raw.get("num_latents") or d_in * int(raw["expansion_factor"]))
    if tuple(weights["encoder.weight"].shape) != (d_sae, d_in) or tuple(weights["W_dec"].shape) != (d_sae, d_in):
        raise FeatintError(f"{directory}: encoder.weight {tuple(weights['encoder.weight'].shape)} and W_dec "
                           f"{tuple(weights['W_dec'].shape)} do not match d_in {d_in} and {d_sae} latents.")
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": int(raw["k"]), "apply_b_dec_to_input": True,
           "hook_point": directory.name, "sparsify_cfg": raw}
    return cfg, {"W_enc": weights["encoder.weight"].T.contiguous(), "b_enc": weights["encoder.bias"],
                 "W_dec": weights["W_dec"], "b_dec": weights["b_dec"]}


def sparsify_hook_names(hookpoint: str) -> set[str]:
    """The transformer-lens hooks a sparsify hookpoint (a module name of the Hugging Face model) reads: the
    output of decoder layer N (``layers.N``, or ``model.layers.N``, ``gpt_neox.layers.N``, ...) is the residual
    stream after block N, i.e. ``blocks.N.hook_resid_post`` = ``blocks.{N+1}.hook_resid_pre``; ``layers.N.mlp``
    is ``blocks.N.hook_mlp_out``. Another hookpoint maps to nothing (set ``sae.hook_name``)."""
    match = re.fullmatch(r"(?:.*\.)?(?:layers|h)\.(\d+)(\.mlp)?", hookpoint)
    if match is None:
        return set()
    layer = int(match.group(1))
    if match.group(2):
        return {f"blocks.{layer}.hook_mlp_out"}
    return {f"blocks.{layer}.hook_resid_post", f"blocks.{layer + 1}.hook_resid_pre"}


def saelens_hook_name(cfg: dict[str, Any]) -> str | None:
    """The hook a SAELens config names: ``metadata.hook_name`` (format 6.x) or ``hook_name`` / ``hook_point``
    at the top level (earlier releases), as SAELens's own loader reads them."""
    metadata = cfg.get("metadata") or {}
    return metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")


def unfolded_sae(cfg: dict[str, Any], weights: dict[str, torch.Tensor], normaliser: Normaliser) -> TopKSAE:
    """featint's TopK SAE in the normaliser's space computing exactly the SAELens SAE on raw activations: the
    inverse of :func:`folded_weights` (``W_dec = W_dec' * s``, ``b_dec = (b_dec' - m) * s``,
    ``W_enc = (W_enc' / s)^T``; ``b_enc = b_enc'`` with the pre-encoder bias, ``b_enc' + m W_enc'`` without)."""
    mean, scale = normaliser.mean.double(), normaliser.scale.double()
    W_enc, W_dec = weights["W_enc"].double(), weights["W_dec"].double()
    b_enc, b_dec = weights["b_enc"].double(), weights["b_dec"].double()
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    sae = TopKSAE(int(cfg["d_in"]), int(cfg["d_sae"]), int(cfg["k"]), "free", pre_encoder_bias=apply_b_dec)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec * scale[None, :])
        sae.b_dec.copy_((b_dec - mean) * scale)
        sae.W_enc.copy_((W_enc / scale[:, None]).T)
        sae.b_enc.copy_(b_enc if apply_b_dec else b_enc + mean @ W_enc)
    return sae


def import_sae(directory: str | Path, activations_dir: str | Path, out_dir: str | Path, seed: int,
               n_features: int, k: int, source: str = "saelens", hook_name: str | None = None) -> dict[str, Any]:
    """Stage entry point: the SAELens SAE (``source`` saelens) or sparsify folder (sparsify) at ``directory``
    as the run's ``standard`` model of ``seed``; ``hook_name`` overrides the hook its files name:
    ``weights.safetensors`` (and the same weights as ``init.safetensors``: an imported SAE has no step 0) and
    ``parameters.parquet`` in ``out_dir``. Stops with a clear message when its input width, hook, width or k
    do not match the run's activations and config (the other kinds are sized by ``sae.n_features`` and
    ``sae.k``)."""
    import pandas as pd

    from featint.activations import ActivationStore
    from featint.models import FeatureModel, save_model

    readers = {"saelens": read_saelens, "sparsify": read_sparsify}
    if source not in readers:
        raise FeatintError(f"sae.source {source!r}: featint imports {sorted(readers)} SAEs.")
    cfg, weights = readers[source](directory)
    activations, out = ActivationsFolder(activations_dir), ModelFolder(out_dir)
    normaliser = Normaliser.load(activations.normaliser)
    store = ActivationStore(activations.split("test"))
    if hook_name is not None:
        hooks = {hook_name}
    elif source == "sparsify":
        hooks = sparsify_hook_names(cfg["hook_point"])
        if not hooks:
            raise FeatintError(f"{directory}: hookpoint {cfg['hook_point']!r} (the folder's name) maps to no "
                               "transformer-lens hook featint knows; set sae.hook_name to the hook it reads.")
    else:
        hooks = {saelens_hook_name(cfg)} - {None}  # type: ignore[arg-type]
    if int(cfg["d_in"]) != store.meta.d_model:
        raise FeatintError(f"{directory}: d_in = {cfg['d_in']} but the run's activations ({store.directory}) have "
                           f"d = {store.meta.d_model}; import an SAE trained on this model's residual stream.")
    if hooks and normaliser.hook_name not in hooks:
        raise FeatintError(f"{directory}: the SAE reads {' = '.join(sorted(hooks))} but the run's activations are at "
                           f"{normaliser.hook_name!r}; set hook.layer / hook.site to the SAE's hook, import an SAE of "
                           "this hook, or set sae.hook_name if you know the SAE reads this one.")
    if (int(cfg["d_sae"]), int(cfg["k"])) != (n_features, k):
        raise FeatintError(f"{directory}: d_sae = {cfg['d_sae']}, k = {cfg['k']} but the config has "
                           f"sae.n_features = {n_features}, sae.k = {k}; set them to the SAE's (the other kinds are "
                           "sized by them).")
    model = FeatureModel("standard", unfolded_sae(cfg, weights, normaliser)).eval()
    extra = {"hook_name": normaliser.hook_name, "normaliser_kind": normaliser.kind, "seed": seed, "lr": None,
             "tokens": 0, "imported_from": str(Path(directory).resolve()), "imported_source": source,
             "saelens_cfg": cfg}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_model(model, out.init, extra)
    counts = model.parameter_counts()
    frame = pd.DataFrame([{"model": "standard", "seed": seed, "component": c, "parameters": n}
                          for c, n in counts.items()])
    frame["share"] = frame["parameters"] / counts["total"]
    frame["trainable"] = 0
    write_table(frame, out.parameters, PARAMETERS)
    save_model(model, out.weights, extra)
    return cfg
