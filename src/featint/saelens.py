"""SAELens's on-disk format: export a trained TopK SAE with the normaliser folded into its weights, and import a
SAELens SAE (``topk``, ``standard`` = ReLU or ``jumprelu``; configs of SAELens 6 and earlier) or an EleutherAI
sparsify TopK folder as a run's standard model (the fold undone for the run's normaliser).

SAELens (v6) saves an SAE as a folder holding ``sae_weights.safetensors`` (``W_enc`` [d_in, d_sae], ``W_dec``
[d_sae, d_in], ``b_enc`` [d_sae], ``b_dec`` [d_in]) and ``cfg.json`` (``architecture`` "topk", ``d_in``, ``d_sae``,
``k``, ``dtype``, ``device``, ``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations`` and a
``metadata`` block with ``sae_lens_version``, ``model_name`` and ``hook_name``; a config without a version is read as
the pre-6.0 format, with those fields at the top level); its TopK SAE computes
``f = ReLU(TopK_k((x - b_dec) @ W_enc + b_enc))`` and ``x_hat = f @ W_dec + b_dec`` on raw activations (field names
and formulas read from SAELens's ``sae_lens/saes/sae.py``, ``topk_sae.py``, ``standard_sae.py``,
``jumprelu_sae.py`` (``f = ReLU(pre) * (pre > threshold)``) and
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
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file

from featint.activations import ActivationStore
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
from featint.models import ThresholdSAE, TopKSAE, load_model
from featint.normaliser import Normaliser
from featint.tables import PARAMETERS, write_table

log = logging.getLogger(__name__)

#: SAELens architectures featint imports, and the activation each becomes (:data:`featint.models.ACTIVATIONS`)
SAELENS_ARCHITECTURES = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}
#: the architecture an SAE of each activation is exported as
EXPORTED_ARCHITECTURE = {activation: architecture for architecture, activation in SAELENS_ARCHITECTURES.items()}

WEIGHTS, CONFIG = SAELENS_WEIGHTS, SAELENS_CONFIG
#: The SAELens release whose on-disk format the export writes and whose loader the tests run on it.
SAELENS_VERSION = "6.54.12"


class FoldedSAE(NamedTuple):
    """A trained SAE-only model with the normaliser folded in, as SAELens stores it."""

    state: dict[str, torch.Tensor]  #: W_enc [d, F], W_dec [F, d], b_enc, b_dec, float32, raw activation space
    fields: dict[str, Any]  #: the model-dependent cfg.json fields (architecture, d_in, d_sae, k, apply_b_dec_to_input)
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
    fields: dict[str, Any] = {"architecture": EXPORTED_ARCHITECTURE[sae.activation], "d_in": sae.d_model,
                              "d_sae": sae.n_features}
    if isinstance(sae, ThresholdSAE):  # an imported threshold SAE: its pre-activations are unchanged by the fold
        if sae.activation == "jumprelu":
            state["threshold"] = sae.threshold.detach().double()
    else:
        fields["k"] = sae.k
    fields["apply_b_dec_to_input"] = sae.pre_encoder_bias
    return FoldedSAE({name: tensor.float().contiguous() for name, tensor in state.items()}, fields, model.kind,
                     extra.get("seed"))


def export_saelens(weights_path: str | Path, normaliser_path: str | Path, out_dir: str | Path, model_name: str,
                   context_size: int | None = None) -> dict:
    """Stage entry point: write ``out_dir`` as a SAELens TopK SAE folder; returns its config."""
    normaliser = Normaliser.load(normaliser_path)
    folded = folded_weights(weights_path, normaliser)
    config = {
        **folded.fields, "dtype": "float32", "device": "cpu", "normalize_activations": "none",
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
    """SAELens's forward on raw activations ``x``, from the folder's files alone (the reference the export and
    import are tested against; SAELens itself is run on them in the side environment's tests):
    ``pre = (x - b_dec * apply) @ W_enc + b_enc``; ``f = ReLU(TopK(pre))`` (topk), ``ReLU(pre)`` (standard)
    or ``ReLU(pre) * (pre > threshold)`` (jumprelu); ``x_hat = f @ W_dec + b_dec``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = saelens_config(json.loads((directory / CONFIG).read_text(encoding="utf-8")))
    w = load_file(str(directory / WEIGHTS))
    sae_in = x - w["b_dec"] * float(cfg["apply_b_dec_to_input"])
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        top = pre.topk(int(cfg["k"]), dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        acts = torch.relu(pre)
        if cfg["architecture"] == "jumprelu":
            threshold = w["threshold"] if "threshold" in w else \
                w["log_threshold"].exp() if "log_threshold" in w else torch.tensor(cfg["jump_relu_threshold"])
            acts = acts * (pre > threshold)
    return acts @ w["W_dec"] + w["b_dec"]


# ---------------------------------------------------------------------------------------------------------
# Import: a SAELens TopK SAE as the run's standard model




def read_saelens(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(cfg.json in the 6.x form, float32 weights on raw activations) of a SAELens SAE folder: a ``topk``,
    ``standard`` (ReLU) or ``jumprelu`` SAE. A JumpReLU SAE's threshold is the ``threshold`` tensor (per latent,
    or one value for all), ``exp(log_threshold)`` in older files, or the config's scalar ``jump_relu_threshold``
    (Llama Scope's form); ``normalize_activations: expected_average_only_in`` is folded into the weights when
    the config carries its ``norm_scaling_factor`` (as SAELens's ``fold_activation_norm_scaling_factor`` does),
    else refused."""

    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise FeatintError(f"{directory} has no {name}; sae.path must be a SAELens SAE folder "
                               f"({CONFIG} + {WEIGHTS}), e.g. one written by `featint export-saelens` or "
                               "SAELens's save_model.")
    where = directory / CONFIG
    cfg = saelens_config(json.loads(where.read_text(encoding="utf-8")))
    architecture = cfg["architecture"]
    if architecture not in SAELENS_ARCHITECTURES:
        raise FeatintError(f"{where}: architecture is {architecture!r}; featint imports SAELens "
                           f"{', '.join(SAELENS_ARCHITECTURES)} SAEs (BatchTopK and Matryoshka SAEs are saved as "
                           "jumprelu, which imports).")
    if architecture == "topk" and "k" not in cfg:
        raise FeatintError(f"{where}: a topk SAE without k (nor activation_fn_kwargs.k).")
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        raise FeatintError(f"{where}: rescale_acts_by_decoder_norm is true (the top k is taken on activations "
                           "scaled by the decoder norms); fold the norms first (SAELens's fold_W_dec_norm) and save "
                           "it again.")
    if architecture == "standard" and cfg.get("activation_fn", "relu") != "relu":
        raise FeatintError(f"{where}: a standard SAE with activation_fn {cfg['activation_fn']!r}; featint imports "
                           "standard SAEs with ReLU.")
    if cfg.get("reshape_activations") not in (None, "none"):
        raise FeatintError(f"{where}: reshape_activations is {cfg['reshape_activations']!r}; featint imports SAEs "
                           "of one residual-stream vector per token (\"none\").")
    weights = _float_weights(directory / WEIGHTS, ("W_enc", "W_dec", "b_enc", "b_dec"))
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    if tuple(weights["W_enc"].shape) != (d_in, d_sae) or tuple(weights["W_dec"].shape) != (d_sae, d_in):
        raise FeatintError(f"{directory}: weight shapes W_enc {tuple(weights['W_enc'].shape)}, W_dec "
                           f"{tuple(weights['W_dec'].shape)} do not match d_in {d_in}, d_sae {d_sae} of {CONFIG}.")
    if architecture == "jumprelu":
        weights["threshold"] = _jumprelu_threshold(where, cfg, weights, d_sae)
    normalisation = cfg.get("normalize_activations") or "none"
    if normalisation == "expected_average_only_in" and cfg.get("norm_scaling_factor") is not None:
        factor = float(cfg["norm_scaling_factor"])  # SAELens: W_enc * c, W_dec / c, b_dec / c
        weights.update(W_enc=weights["W_enc"] * factor, W_dec=weights["W_dec"] / factor,
                       b_dec=weights["b_dec"] / factor)
        cfg["normalize_activations"] = "none"
    elif normalisation != "none":
        fix = ("add its norm_scaling_factor (sqrt(d_in) / the dataset's mean activation norm, from the release's "
               "registry entry) to the config" if normalisation == "expected_average_only_in" else
               "export it with the normalisation folded into its weights")
        raise FeatintError(f"{where}: normalize_activations is {normalisation!r}; featint imports SAEs that read raw "
                           f"activations (\"none\") and applies its own normaliser around them: {fix}.")
    return cfg, weights


def _jumprelu_threshold(where: Path, cfg: dict[str, Any], weights: dict[str, torch.Tensor],
                        d_sae: int) -> torch.Tensor:
    """A JumpReLU SAE's per-latent threshold [d_sae] from wherever its files keep it."""
    if "threshold" in weights:
        threshold = weights.pop("threshold")
    elif "log_threshold" in weights:
        threshold = weights.pop("log_threshold").exp()
    elif cfg.get("jump_relu_threshold") is not None:
        threshold = torch.tensor(float(cfg["jump_relu_threshold"]))
    else:
        raise FeatintError(f"{where}: a jumprelu SAE without a threshold (no threshold or log_threshold tensor, no "
                           "jump_relu_threshold in the config).")
    if threshold.numel() == 1:
        threshold = threshold.reshape(()).expand(d_sae).clone()
    if tuple(threshold.shape) != (d_sae,):
        raise FeatintError(f"{where}: threshold of shape {tuple(threshold.shape)}, not one value or {d_sae} (d_sae).")
    return threshold.contiguous()


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
    topk SAE's k in ``activation_fn_kwargs`` (``activation_fn`` topk with a k makes a ``standard`` entry a topk
    SAE), and may store ``normalize_activations`` as a bool (false =
    ``none``, true = ``expected_average_only_in``)."""
    cfg = dict(raw)
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if version is None or int(str(version).split(".")[0]) < 6:
        cfg = {_PRE_6_RENAMES.get(key, key): value for key, value in cfg.items()}
        cfg.setdefault("architecture", "standard")
        cfg.setdefault("apply_b_dec_to_input", True)
        cfg.setdefault("activation_fn", "relu")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if cfg["activation_fn"] == "topk" and kwargs.get("k") is not None:
            cfg["architecture"] = "topk"
        if cfg["architecture"] == "topk" and "k" not in cfg and "k" in kwargs:
            cfg["k"] = kwargs["k"]
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
    """featint's SAE in the normaliser's space computing exactly the SAELens SAE on raw activations: the
    inverse of :func:`folded_weights` (``W_dec = W_dec' * s``, ``b_dec = (b_dec' - m) * s``,
    ``W_enc = (W_enc' / s)^T``; ``b_enc = b_enc'`` with the pre-encoder bias, ``b_enc' + m W_enc'`` without).
    The pre-activations are the same numbers in both spaces, so a JumpReLU threshold carries over unchanged;
    a ``standard`` or ``jumprelu`` SAE becomes a :class:`~featint.models.ThresholdSAE`."""
    mean, scale = normaliser.mean.double(), normaliser.scale.double()
    W_enc, W_dec = weights["W_enc"].double(), weights["W_dec"].double()
    b_enc, b_dec = weights["b_enc"].double(), weights["b_dec"].double()
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    activation = SAELENS_ARCHITECTURES[cfg["architecture"]]
    sae: TopKSAE
    if activation == "topk":
        sae = TopKSAE(d_in, d_sae, int(cfg["k"]), "free", pre_encoder_bias=apply_b_dec)
    else:
        sae = ThresholdSAE(d_in, d_sae, activation, "free", pre_encoder_bias=apply_b_dec)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec * scale[None, :])
        sae.b_dec.copy_((b_dec - mean) * scale)
        sae.W_enc.copy_((W_enc / scale[:, None]).T)
        sae.b_enc.copy_(b_enc if apply_b_dec else b_enc + mean @ W_enc)
        if activation == "jumprelu":
            sae.threshold.copy_(weights["threshold"])
    return sae


#: sae.path's prefix naming a folder of a Hugging Face repository, resolved in the local cache
HUB_PREFIX = "hf://"


def local_sae_folder(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """``sae.path`` as a local folder: a path is itself; ``hf://<owner>/<repo>[@<revision>]/<folder>`` is that
    folder of the repository as the local Hugging Face cache holds it (``HF_HUB_CACHE`` / ``HF_HOME``, as
    ``huggingface_hub`` finds them), resolved offline: featint never downloads at run time. A user with network
    downloads the release first, as usual (``huggingface-cli download <owner>/<repo> --include '<folder>/*'``,
    or SAELens's / sparsify's own loaders, which fill the same cache); ``cache_dir`` overrides the cache."""
    text = str(path)
    if not text.startswith(HUB_PREFIX):
        return Path(path)
    parts = text[len(HUB_PREFIX):].strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise FeatintError(f"sae.path {text!r}: write a Hugging Face folder as {HUB_PREFIX}<owner>/<repo>/<folder> "
                           f"(optionally <repo>@<revision>), e.g. {HUB_PREFIX}jbloom/GPT2-Small-SAEs-Reformatted/"
                           "blocks.8.hook_resid_pre.")
    repo, _, revision = parts[1].partition("@")
    repo_id, folder = f"{parts[0]}/{repo}", "/".join(parts[2:])
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    fix = (f"download it first (with network): huggingface-cli download {repo_id}"
           + (f" --revision {revision}" if revision else "") + f" --include '{folder}/*'")
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=f"{folder}/*",
                                          cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        raise FeatintError(f"sae.path {text!r}: {repo_id} is not in the local Hugging Face cache "
                           f"({cache_dir or HF_HUB_CACHE}); "
                           f"{fix}.") from exc
    if not (snapshot / folder).is_dir():
        raise FeatintError(f"sae.path {text!r}: the cached snapshot {snapshot} has no folder {folder!r}; {fix}.")
    return snapshot / folder


class ActiveLatents(NamedTuple):
    """How many latents an SAE activates per token of a split."""

    mean: float  #: the mean over the split's selected tokens
    max: int  #: the most on any token


@torch.no_grad()
def active_latents(sae: TopKSAE, normaliser: Normaliser, store: ActivationStore,
                   chunk: int = 4096) -> ActiveLatents:
    """The L0 of ``sae`` on the selected tokens of ``store`` (an imported threshold SAE's sparsity)."""
    total, most, n = 0, 0, 0
    for _, vectors in store.iter_shards(store.selected_mask()):
        x = normaliser.apply(vectors)
        for start in range(0, x.shape[0], chunk):
            l0 = sae.encode(x[start : start + chunk])[0].l0
            total, most, n = total + int(l0.sum()), max(most, int(l0.max())), n + l0.numel()
    return ActiveLatents(total / max(n, 1), most)


def import_sae(directory: str | Path, activations_dir: str | Path, out_dir: str | Path, seed: int,
               n_features: int, k: int, source: str = "saelens", hook_name: str | None = None) -> dict[str, Any]:
    """Stage entry point: the SAELens SAE (``source`` saelens) or sparsify folder (sparsify) at ``directory``
    as the run's ``standard`` model of ``seed``; ``hook_name`` overrides the hook its files name:
    ``weights.safetensors`` (and the same weights as ``init.safetensors``: an imported SAE has no step 0) and
    ``parameters.parquet`` in ``out_dir``. Stops with a clear message when its input width, hook, width or k
    do not match the run's activations and config (the other kinds are sized by ``sae.n_features`` and
    ``sae.k``)."""
    import pandas as pd

    from featint.models import FeatureModel, save_model

    readers = {"saelens": read_saelens, "sparsify": read_sparsify}
    if source not in readers:
        raise FeatintError(f"sae.source {source!r}: featint imports {sorted(readers)} SAEs.")
    directory = local_sae_folder(directory)
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
    topk = cfg["architecture"] == "topk"
    if topk and (int(cfg["d_sae"]), int(cfg["k"])) != (n_features, k):
        raise FeatintError(f"{directory}: d_sae = {cfg['d_sae']}, k = {cfg['k']} but the config has "
                           f"sae.n_features = {n_features}, sae.k = {k}; set them to the SAE's (the other kinds are "
                           "sized by them).")
    if not topk and int(cfg["d_sae"]) != n_features:
        raise FeatintError(f"{directory}: d_sae = {cfg['d_sae']} but the config has sae.n_features = {n_features}; "
                           "set it to the SAE's (the other kinds are sized by it).")
    model = FeatureModel("standard", unfolded_sae(cfg, weights, normaliser)).eval()
    extra = {"hook_name": normaliser.hook_name, "normaliser_kind": normaliser.kind, "seed": seed, "lr": None,
             "tokens": 0, "imported_from": str(Path(directory).resolve()), "imported_source": source,
             "saelens_cfg": cfg}
    if not topk:
        l0 = active_latents(model.sae, normaliser, store)
        log.info("%s: a %s SAE with %.1f active latents per test token on average (the most %d); the kinds "
                 "trained beside it are TopK SAEs at sae.k = %d", directory, cfg["architecture"], l0.mean, l0.max, k)
        if not 0.5 <= k / max(l0.mean, 1e-9) <= 2.0:
            log.warning("sae.k = %d is far from the imported SAE's mean L0 (%.1f): the SAEs trained beside it "
                        "(joint, param_matched, ...) will not be as sparse as it; set sae.k to about %d for a like "
                        "for like comparison.", k, l0.mean, round(l0.mean))
        extra.update(test_l0_mean=l0.mean, test_l0_max=l0.max)
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
