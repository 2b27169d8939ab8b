"""SAELens export: the exported folder has SAELens's fields, and its TopK forward on raw activations gives
featint's reconstruction mapped back to raw space."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from featint.config import Settings
from featint.errors import FeatintError
from featint.models import FeatureModel, build_model, load_model, save_model
from featint.normaliser import Normaliser
from featint.saelens import (
    CONFIG,
    SAELENS_VERSION,
    WEIGHTS,
    export_saelens,
    import_sae,
    saelens_hook_name,
    saelens_reconstruction,
)

D, F_ = 24, 96


def _trained_looking_standard() -> tuple[Settings, FeatureModel]:
    """Shapes and a standard SAE that looks trained: nonzero biases, decoder rows of varied norms (draws from
    torch's global RNG, which the caller seeds)."""
    shapes = Settings.from_dict({"sae": {"n_features": F_, "k": 8}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    standard = build_model("standard", D, shapes.sae, shapes.nfm)
    with torch.no_grad():
        standard.sae.b_dec.normal_(std=0.3)
        standard.sae.b_enc.normal_(std=0.1)
        standard.sae.W_dec.mul_(torch.rand(F_, 1) * 3)
    return shapes, standard


@pytest.mark.parametrize("kind", ["standard", "standard_refit"])
def test_exported_sae_reconstructs_raw_activations_as_featint_does(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    raw = torch.randn(512, D) * torch.linspace(0.5, 3.0, D) + torch.linspace(-2.0, 2.0, D)
    normaliser = Normaliser.fit([raw], "zscore", "blocks.3.hook_resid_pre")
    normaliser.save(tmp_path / "normaliser.safetensors")
    shapes, standard = _trained_looking_standard()
    model = standard if kind == "standard" else build_model(kind, D, shapes.sae, shapes.nfm, standard=standard)
    save_model(model, tmp_path / "weights.safetensors", {"hook_name": normaliser.hook_name, "seed": 0})
    config = export_saelens(tmp_path / "weights.safetensors", tmp_path / "normaliser.safetensors", tmp_path / "sae",
                            model_name="smollm2-135m-instruct", context_size=128)

    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    theirs = saelens_reconstruction(tmp_path / "sae", raw)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)

    written = json.loads((tmp_path / "sae" / CONFIG).read_text())
    assert written == json.loads(json.dumps(config))
    assert written["architecture"] == "topk" and written["k"] == 8 and written["normalize_activations"] == "none"
    assert (written["d_in"], written["d_sae"]) == (D, F_)
    assert written["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert written["metadata"]["sae_lens_version"] == SAELENS_VERSION
    assert written["apply_b_dec_to_input"] == (kind == "standard")  # the refit folds b_dec into b_enc
    weights = load_file(str(tmp_path / "sae" / WEIGHTS))
    assert {name: tuple(t.shape) for name, t in weights.items()} == {
        "W_enc": (D, F_), "W_dec": (F_, D), "b_enc": (F_,), "b_dec": (D,)}


def test_models_with_an_nfm_are_not_exported(tmp_path: Path) -> None:
    shapes = Settings.from_dict({"sae": {"n_features": F_, "k": 8}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    save_model(build_model("joint", D, shapes.sae, shapes.nfm), tmp_path / "joint.safetensors", {})
    Normaliser.fit([torch.randn(64, D)], "zscore", "h").save(tmp_path / "n.safetensors")
    with pytest.raises(FeatintError, match="only SAE-only kinds"):
        export_saelens(tmp_path / "joint.safetensors", tmp_path / "n.safetensors", tmp_path / "out", "m")


def _run_with_sae(tmp_path: Path, hook: str = "blocks.3.hook_resid_pre") -> tuple[torch.Tensor, Normaliser, Path]:
    """Raw activations in a store with its normaliser (an importing run's), and a trained-looking featint SAE
    exported to a SAELens folder with another normaliser (the exporting run's)."""
    from featint.activations import write_store_from_tensor

    torch.manual_seed(1)
    raw = torch.randn(600, D) * torch.linspace(0.5, 3.0, D) + torch.linspace(-2.0, 2.0, D)
    acts = tmp_path / "acts"
    write_store_from_tensor(acts / "test", raw[:300], "test", hook, doc_length=50)
    normaliser = Normaliser.fit([raw[:300]], "zscore", hook)  # the importing run's
    normaliser.save(acts / "normaliser.safetensors")
    exporting = Normaliser.fit([raw[300:] * 1.1 + 0.2], "zscore", "blocks.3.hook_resid_pre")
    exporting.save(tmp_path / "exporting.safetensors")
    _, standard = _trained_looking_standard()
    save_model(standard, tmp_path / "weights.safetensors", {"hook_name": exporting.hook_name, "seed": 0})
    export_saelens(tmp_path / "weights.safetensors", tmp_path / "exporting.safetensors", tmp_path / "sae", "m")
    return raw, normaliser, acts


def test_an_imported_saelens_sae_reconstructs_raw_activations_as_saelens_does(tmp_path: Path) -> None:
    """Round trip: export with one run's normaliser, import into a run with another; the imported standard
    model, applied in that run's normalised space, reconstructs raw activations exactly as SAELens's forward
    of the folder does."""
    raw, normaliser, acts = _run_with_sae(tmp_path)
    import_sae(tmp_path / "sae", acts, tmp_path / "standard", seed=2, n_features=F_, k=8)
    model, extra = load_model(tmp_path / "standard" / "weights.safetensors")
    assert model.kind == "standard" and extra["seed"] == 2 and extra["hook_name"] == normaliser.hook_name
    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    torch.testing.assert_close(ours, saelens_reconstruction(tmp_path / "sae", raw), rtol=1e-4, atol=1e-4)
    init, _ = load_model(tmp_path / "standard" / "init.safetensors")
    assert torch.equal(init.sae.W_dec, model.sae.W_dec)  # no step 0: init is the imported SAE itself
    parameters = pd.read_parquet(tmp_path / "standard" / "parameters.parquet").set_index("component")
    assert parameters.loc["total", "parameters"] == 2 * D * F_ + F_ + D
    # the frozen-SAE kinds build on it like on a trained standard SAE
    shapes = Settings.from_dict({"sae": {"n_features": F_, "k": 8}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    sequential = build_model("sequential", D, shapes.sae, shapes.nfm, standard=model)
    z = normaliser.apply(raw[:20])
    assert torch.equal(sequential(z).sae, model(z).total)


@pytest.mark.parametrize(("change", "message"), [
    ("hook", "set hook.layer / hook.site"), ("width", "sae.n_features"), ("d_in", "d_in"),
    ("architecture", "architecture is 'gated'; featint imports SAELens topk, standard, jumprelu SAEs"),
    ("no-threshold", "a jumprelu SAE without a threshold"), ("layer-norm", "normalize_activations is 'layer_norm'"),
    ("average-norm", "add its norm_scaling_factor"), ("rescale", "rescale_acts_by_decoder_norm is true"),
    ("missing", "has no cfg.json")])
def test_a_mismatched_saelens_sae_stops_with_a_clear_message(change: str, message: str, tmp_path: Path) -> None:
    _, _, acts = _run_with_sae(tmp_path, hook="blocks.5.hook_resid_pre" if change == "hook" else
                               "blocks.3.hook_resid_pre")
    folder = tmp_path / "sae"
    cfg = json.loads((folder / CONFIG).read_text())
    if change == "d_in":
        cfg["d_in"] = D + 1
    cfg.update({"architecture": {"architecture": "gated", "no-threshold": "jumprelu"}.get(change, "topk"),
                "normalize_activations": {"layer-norm": "layer_norm",
                                          "average-norm": "expected_average_only_in"}.get(change, "none"),
                "rescale_acts_by_decoder_norm": change == "rescale"})
    (folder / CONFIG).write_text(json.dumps(cfg))
    if change == "missing":
        (folder / CONFIG).unlink()
    with pytest.raises(FeatintError, match=message):
        import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_ + (change == "width"), k=8)


def test_the_hook_is_read_from_every_saelens_config_format() -> None:
    assert saelens_hook_name({"metadata": {"hook_name": "blocks.3.hook_resid_pre"}}) == "blocks.3.hook_resid_pre"
    assert saelens_hook_name({"hook_name": "blocks.2.hook_resid_post"}) == "blocks.2.hook_resid_post"  # before 6.0
    assert saelens_hook_name({"hook_point": "blocks.1.hook_resid_pre"}) == "blocks.1.hook_resid_pre"  # older
    assert saelens_hook_name({"d_in": 4}) is None


# SAELens pins transformer-lens < 4 (featint runs 4.x), so its own loader runs in a separate environment, built
# once (about two minutes: the local CPU torch wheel, then sae-lens from the package registry) and kept.
SAELENS_ENV = Path(os.environ.get("FEATINT_SAELENS_ENV",
                                  Path.home() / ".cache" / "featint" / f"sae-lens-{SAELENS_VERSION}"))
LOAD_WITH_SAELENS = """
import json, sys, torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE
raw = load_file(sys.argv[1])["raw"]
out, fields = {}, {}
for name, folder in zip(sys.argv[3::2], sys.argv[4::2]):
    sae = SAE.load_from_disk(folder, device="cpu")
    with torch.no_grad():
        out[name + ".encode_decode"] = sae.decode(sae.encode(raw)).contiguous()
        out[name + ".forward"] = sae(raw).contiguous()
    meta = sae.cfg.metadata
    fields[name] = {"class": type(sae).__name__, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k,
                    "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input, "hook_name": meta.hook_name,
                    "model_name": meta.model_name, "context_size": meta.context_size}
save_file(out, sys.argv[2])
print(json.dumps(fields))
"""


def _saelens_python() -> Path:
    return _side_python(SAELENS_ENV, f"sae-lens=={SAELENS_VERSION}")


def _side_python(env: Path, requirement: str, base: tuple[str, ...] = ("torch==2.13.0",),
                 no_deps: bool = False) -> Path:
    """The interpreter of a side environment holding ``requirement`` beside ``base`` (the local CPU torch wheel
    unless told; with ``no_deps``, ``requirement`` alone, its dependencies being ``base``), built once and kept:
    a library pinning what featint cannot share runs there."""
    python = env / "bin" / "python"
    if python.exists():
        return python
    building = env.with_name(env.name + ".building")
    pip = [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    steps = [[sys.executable, "-m", "venv", "--clear", str(building)], [*pip, *base],
             [*pip, *(["--no-deps"] if no_deps else []), requirement]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            reason = f"cannot build the side environment ({' '.join(step[-2:])}):\n{done.stderr[-2000:]}"
            if os.environ.get("CI") == "true":
                raise RuntimeError(reason)
            pytest.skip(reason)
    building.rename(env)  # venv scripts use absolute paths: the interpreter is called directly
    return python


@pytest.mark.slow
def test_saelens_own_loader_reads_the_export_and_reconstructs_as_featint(tmp_path: Path) -> None:
    """SAELens's ``SAE.load_from_disk`` (its release :data:`SAELENS_VERSION`, in its own environment) reads both
    export variants (with and without the pre-encoder bias) as TopK SAEs with our hook and model, and its
    forward on raw activations equals featint's reconstruction mapped back to raw space."""
    torch.manual_seed(3)
    raw = torch.randn(256, D) * torch.linspace(0.5, 3.0, D) + torch.linspace(-2.0, 2.0, D)
    normaliser = Normaliser.fit([raw], "zscore", "blocks.3.hook_resid_pre")
    normaliser.save(tmp_path / "normaliser.safetensors")
    shapes, standard = _trained_looking_standard()
    models = {"standard": standard,
              "standard_refit": build_model("standard_refit", D, shapes.sae, shapes.nfm, standard=standard)}
    ours, folders = {}, []
    for kind, model in models.items():
        save_model(model, tmp_path / f"{kind}.safetensors", {"hook_name": normaliser.hook_name, "seed": 0})
        export_saelens(tmp_path / f"{kind}.safetensors", tmp_path / "normaliser.safetensors", tmp_path / kind,
                       model_name="smollm2-135m-instruct", context_size=128)
        with torch.no_grad():
            ours[kind] = normaliser.invert(model(normaliser.apply(raw)).total)
        folders += [kind, str(tmp_path / kind)]
    from safetensors.torch import save_file

    save_file({"raw": raw}, str(tmp_path / "raw.safetensors"))
    script = tmp_path / "load_with_saelens.py"
    script.write_text(LOAD_WITH_SAELENS)
    loaded = subprocess.run([str(_saelens_python()), str(script), str(tmp_path / "raw.safetensors"),
                             str(tmp_path / "theirs.safetensors"), *folders], capture_output=True, text=True,
                            timeout=600, check=False)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    fields = json.loads(loaded.stdout.strip().splitlines()[-1])
    theirs = load_file(str(tmp_path / "theirs.safetensors"))
    for kind in models:
        assert fields[kind] == {"class": "TopKSAE", "d_in": D, "d_sae": F_, "k": 8,
                                "apply_b_dec_to_input": kind == "standard", "hook_name": "blocks.3.hook_resid_pre",
                                "model_name": "smollm2-135m-instruct", "context_size": 128}
        for route in ("encode_decode", "forward"):
            torch.testing.assert_close(theirs[f"{kind}.{route}"], ours[kind], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# EleutherAI sparsify folders


def _sparsify_folder(root: Path, hookpoint: str = "layers.2", **cfg: object) -> Path:
    """One hookpoint's folder as sparsify's ``SparseCoder.save_to_disk`` writes it (``sae.safetensors`` with the
    module's state dict, ``cfg.json`` with its config and ``d_in``), trained-looking weights."""
    from safetensors.torch import save_file

    torch.manual_seed(5)
    folder = root / "release" / hookpoint
    folder.mkdir(parents=True)
    state = {"encoder.weight": torch.randn(F_, D) / D**0.5, "encoder.bias": torch.randn(F_) * 0.1,
             "W_dec": torch.randn(F_, D) * torch.rand(F_, 1), "b_dec": torch.randn(D) * 0.3}
    save_file(state, str(folder / "sae.safetensors"))
    config = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": F_, "k": 8,
              "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D, **cfg}
    (folder / "cfg.json").write_text(json.dumps(config))
    return folder


def _sparsify_forward(folder: Path, x: torch.Tensor) -> torch.Tensor:
    """sparsify's TopK forward, from its files alone: ``TopK(ReLU((x - b_dec) W^T + b))`` decoded by W_dec."""
    w = load_file(str(folder / "sae.safetensors"))
    k = json.loads((folder / "cfg.json").read_text())["k"]
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ w["W_dec"] + w["b_dec"]


def test_a_sparsify_folder_imports_as_a_standard_sae_that_reconstructs_as_sparsify_does(tmp_path: Path) -> None:
    """``layers.2`` is the residual after block 2, i.e. ``blocks.3.hook_resid_pre``: the run's hook."""
    raw, normaliser, acts = _run_with_sae(tmp_path)
    folder = _sparsify_folder(tmp_path)
    cfg = import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_, k=8, source="sparsify")
    assert cfg["hook_point"] == "layers.2" and cfg["d_sae"] == F_
    model, extra = load_model(tmp_path / "standard" / "weights.safetensors")
    assert extra["imported_source"] == "sparsify"
    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    torch.testing.assert_close(ours, _sparsify_forward(folder, raw), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("hookpoint", "cfg", "override", "message"), [
    ("layers.5", {}, None, "reads blocks.5.hook_resid_post = blocks.6.hook_resid_pre but the run's"),
    ("layers.2.mlp", {}, None, "reads blocks.2.hook_mlp_out"),
    ("embed_in", {}, None, "maps to no transformer-lens hook featint knows; set sae.hook_name"),
    ("layers.2", {"transcode": True}, None, "transcode is true"),
    ("layers.2", {"skip_connection": True}, None, "skip_connection is true"),
    ("layers.2", {"activation": "groupmax"}, None, "TopK SAEs only"),
    ("layers.2", {"k": 16}, None, "sae.k = 8"),
])
def test_a_sparsify_folder_featint_cannot_use_stops_with_the_fix(hookpoint: str, cfg: dict[str, object],
                                                                override: str | None, message: str,
                                                                tmp_path: Path) -> None:
    _, _, acts = _run_with_sae(tmp_path)
    folder = _sparsify_folder(tmp_path, hookpoint, **cfg)
    with pytest.raises(FeatintError, match=message):
        import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_, k=8, source="sparsify",
                   hook_name=override)


def test_sae_hook_name_overrides_the_hook_the_files_name(tmp_path: Path) -> None:
    _, _, acts = _run_with_sae(tmp_path)
    folder = _sparsify_folder(tmp_path, "transformer.custom_block_2")
    import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_, k=8, source="sparsify",
               hook_name="blocks.3.hook_resid_pre")
    assert (tmp_path / "standard" / "weights.safetensors").is_file()
    with pytest.raises(FeatintError, match="reads blocks.4.hook_resid_pre"):
        import_sae(folder, acts, tmp_path / "again", seed=0, n_features=F_, k=8, source="sparsify",
                   hook_name="blocks.4.hook_resid_pre")


#: The EleutherAI sparsify release whose folders the import reads and whose own save and forward the test runs.
SPARSIFY_VERSION = "1.3.3"
SPARSIFY_ENV = Path(os.environ.get("FEATINT_SPARSIFY_ENV",
                                   Path.home() / ".cache" / "featint" / f"eai-sparsify-{SPARSIFY_VERSION}"))
SAVE_WITH_SPARSIFY = """
import sys, torch
from safetensors.torch import load_file, save_file
from sparsify import SparseCoder, SparseCoderConfig
raw = load_file(sys.argv[1])["raw"]
torch.manual_seed(7)
coder = SparseCoder(raw.shape[1], SparseCoderConfig(num_latents=int(sys.argv[3]), k=int(sys.argv[4])))
with torch.no_grad():  # trained-looking: nonzero biases, decoder rows of varied norms
    coder.encoder.weight.normal_(std=raw.shape[1] ** -0.5)
    coder.encoder.bias.normal_(std=0.1)
    coder.W_dec.copy_(torch.randn_like(coder.W_dec) * torch.rand(coder.W_dec.shape[0], 1))
    coder.b_dec.normal_(std=0.3)
    coder.save_to_disk(sys.argv[2])
    again = SparseCoder.load_from_disk(sys.argv[2])
    save_file({"forward": again(raw).sae_out.contiguous()}, sys.argv[5])
"""


@pytest.mark.slow
def test_a_folder_sparsify_itself_saved_imports_and_reconstructs_as_sparsify_does(tmp_path: Path) -> None:
    """sparsify's own ``SparseCoder.save_to_disk`` (release :data:`SPARSIFY_VERSION`, in its own environment)
    writes a hookpoint's folder; featint imports it, and its reconstruction of raw activations equals
    sparsify's own forward of the folder it reads back."""
    from safetensors.torch import save_file

    raw, normaliser, acts = _run_with_sae(tmp_path)
    save_file({"raw": raw.contiguous()}, str(tmp_path / "raw.safetensors"))
    folder = tmp_path / "release" / "layers.2"
    script = tmp_path / "save_with_sparsify.py"
    script.write_text(SAVE_WITH_SPARSIFY)
    saved = subprocess.run([str(_side_python(SPARSIFY_ENV, f"eai-sparsify=={SPARSIFY_VERSION}")), str(script),
                            str(tmp_path / "raw.safetensors"), str(folder), str(F_), "8",
                            str(tmp_path / "theirs.safetensors")], capture_output=True, text=True, timeout=600,
                           check=False)
    assert saved.returncode == 0, saved.stderr[-3000:]
    import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_, k=8, source="sparsify")
    model, _ = load_model(tmp_path / "standard" / "weights.safetensors")
    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    theirs = load_file(str(tmp_path / "theirs.safetensors"))["forward"]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_sparsify_forward(folder, raw), theirs, rtol=1e-5, atol=1e-5)


def test_sparsify_hookpoints_map_to_the_residual_stream_they_read() -> None:
    from featint.saelens import sparsify_hook_names

    assert sparsify_hook_names("layers.0") == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"}
    assert sparsify_hook_names("model.layers.11") == {"blocks.11.hook_resid_post", "blocks.12.hook_resid_pre"}
    assert sparsify_hook_names("gpt_neox.layers.3") == {"blocks.3.hook_resid_post", "blocks.4.hook_resid_pre"}
    assert sparsify_hook_names("transformer.h.5") == {"blocks.5.hook_resid_post", "blocks.6.hook_resid_pre"}
    assert sparsify_hook_names("layers.4.mlp") == {"blocks.4.hook_mlp_out"}
    assert sparsify_hook_names("layers.4.self_attn") == set()


def test_a_pre_6_saelens_config_is_read_as_saelens_reads_it(tmp_path: Path) -> None:
    """A config written before SAELens 6 (``hook_point``, k in ``activation_fn_kwargs``, no ``architecture``
    meaning ``standard``, a bool ``normalize_activations``) imports when it is a TopK SAE; gpt2-small-res-jb's
    form (a standard ReLU SAE) stops naming its architecture."""
    from featint.saelens import saelens_config

    raw, normaliser, acts = _run_with_sae(tmp_path)
    folder = tmp_path / "sae"
    cfg = json.loads((folder / CONFIG).read_text())
    pre_6 = {"architecture": "topk", "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "dtype": "float32",
             "hook_point": "blocks.3.hook_resid_pre", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 8},
             "apply_b_dec_to_input": cfg["apply_b_dec_to_input"], "normalize_activations": False,
             "sae_lens_training_version": "3.13.0"}
    expected = saelens_reconstruction(folder, raw)  # SAELens's TopK forward of the 6.x form of these weights
    (folder / CONFIG).write_text(json.dumps(pre_6))
    read = saelens_config(pre_6)
    assert (read["hook_name"], read["k"], read["normalize_activations"]) == ("blocks.3.hook_resid_pre", 8, "none")
    import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_, k=8)
    model, _ = load_model(tmp_path / "standard" / "weights.safetensors")
    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # gpt2-small-res-jb's form: a standard ReLU SAE with a pre-6 config
    jb = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "hook_point": "blocks.3.hook_resid_pre", "dtype": "float32",
          "activation_fn_str": "relu", "normalize_activations": "none", "sae_lens_training_version": None}
    assert saelens_config(jb)["architecture"] == "standard"
    (folder / CONFIG).write_text(json.dumps(jb))
    expected = saelens_reconstruction(folder, raw)
    import_sae(folder, acts, tmp_path / "relu", seed=0, n_features=F_, k=8)
    model, _ = load_model(tmp_path / "relu" / "weights.safetensors")
    assert model.sae.activation == "relu"
    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def _threshold_folder(folder: Path, architecture: str, form: str = "threshold") -> Path:
    """``folder`` (a SAELens TopK folder) rewritten as a ``standard`` or ``jumprelu`` SAE of the same weights;
    a JumpReLU threshold stored as ``form``: a per-latent ``threshold``, ``log_threshold``, one ``scalar``
    tensor, or the config's ``jump_relu_threshold``; ``scaled``: with a norm scaling factor to fold."""
    from safetensors.torch import save_file

    cfg = json.loads((folder / CONFIG).read_text())
    weights = load_file(str(folder / WEIGHTS))
    cfg["architecture"] = architecture
    del cfg["k"]
    if architecture == "jumprelu":
        threshold = torch.linspace(0.2, 1.2, cfg["d_sae"])
        if form == "log_threshold":
            weights["log_threshold"] = threshold.log()
        elif form == "scalar":
            weights["threshold"] = torch.tensor(0.7)
        elif form == "config":
            cfg["jump_relu_threshold"] = 0.7
        else:
            weights["threshold"] = threshold
    if form == "scaled":
        cfg.update(normalize_activations="expected_average_only_in", norm_scaling_factor=1.7)
    save_file(weights, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(cfg))
    return folder


def _scaled_reference(folder: Path, raw: torch.Tensor, factor: float) -> torch.Tensor:
    """SAELens's forward of a folder with ``expected_average_only_in`` at scaling factor c: the SAE reads
    ``x c`` and its output is divided by c."""
    cfg = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**cfg, "normalize_activations": "none"}))
    out = saelens_reconstruction(folder, raw * factor) / factor
    (folder / CONFIG).write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize(("architecture", "form"), [
    ("standard", "threshold"), ("jumprelu", "threshold"), ("jumprelu", "log_threshold"), ("jumprelu", "scalar"),
    ("jumprelu", "config"), ("jumprelu", "scaled")])
def test_threshold_saes_import_and_reconstruct_as_saelens_does(architecture: str, form: str,
                                                                tmp_path: Path) -> None:
    """A SAELens ReLU or JumpReLU SAE (every form its threshold takes) imports as a threshold SAE whose varying
    number of active latents reconstructs raw activations as SAELens's forward; sized only by its width (its
    sparsity is its own: sae.k sizes the SAEs trained beside it); exported again, it is the same SAELens SAE."""
    raw, normaliser, acts = _run_with_sae(tmp_path)
    folder = _threshold_folder(tmp_path / "sae", architecture, form)
    expected = _scaled_reference(folder, raw, 1.7) if form == "scaled" else saelens_reconstruction(folder, raw)
    import_sae(folder, acts, tmp_path / "standard", seed=0, n_features=F_, k=3)
    model, extra = load_model(tmp_path / "standard" / "weights.safetensors")
    assert model.sae.activation == {"standard": "relu", "jumprelu": "jumprelu"}[architecture]
    with torch.no_grad():
        z = normaliser.apply(raw)
        rec = model(z)
        ours = normaliser.invert(rec.total)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    l0 = rec.code.l0
    assert l0.min() < l0.max() and rec.code.width == l0.max()  # a varying number of active latents, padded
    assert extra["test_l0_max"] >= extra["test_l0_mean"] > 0
    parameters = pd.read_parquet(tmp_path / "standard" / "parameters.parquet").set_index("component")
    assert parameters.loc["total", "parameters"] == 2 * D * F_ + 2 * F_ + D  # the threshold is a parameter too
    if form != "scaled":
        export_saelens(tmp_path / "standard" / "weights.safetensors", acts / "normaliser.safetensors",
                       tmp_path / "again", "m")
        assert json.loads((tmp_path / "again" / CONFIG).read_text())["architecture"] == architecture
        torch.testing.assert_close(saelens_reconstruction(tmp_path / "again", raw), expected, rtol=1e-4, atol=1e-4)


SAVE_WITH_SAELENS = """import json, sys, torch
from safetensors.torch import load_file, save_file
from sae_lens import (SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE,
                      TopKSAEConfig)
from sae_lens.saes.sae import SAEMetadata
raw = load_file(sys.argv[1])["raw"]
d_sae, k, hook, out = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], {}
torch.manual_seed(11)
for name, cls, config, extra in (("standard", StandardSAE, StandardSAEConfig, {}),
                                 ("jumprelu", JumpReLUSAE, JumpReLUSAEConfig, {}),
                                 ("topk", TopKSAE, TopKSAEConfig, {"k": k})):
    cfg = config(d_in=raw.shape[1], d_sae=d_sae, apply_b_dec_to_input=name != "topk",
                 metadata=SAEMetadata(hook_name=hook, model_name="smollm2-135m-instruct"), **extra)
    sae = cls(cfg)
    with torch.no_grad():  # trained-looking: nonzero biases, decoder rows of varied norms, varied thresholds
        sae.W_enc.normal_(std=raw.shape[1] ** -0.5)
        sae.W_dec.copy_(torch.randn_like(sae.W_dec) * torch.rand(d_sae, 1))
        sae.b_enc.normal_(std=0.1)
        sae.b_dec.copy_(raw.mean(0) + 0.1 * torch.randn(raw.shape[1]))
        if name == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 0.8)
    folder = f"{sys.argv[2]}/{name}"
    sae.save_model(folder)
    again = SAE.load_from_disk(folder, device="cpu")
    with torch.no_grad():
        out[name] = again(raw).contiguous()
        out[name + ".l0"] = (again.encode(raw) > 0).sum(-1).float().contiguous()
# gpt2-small-res-jb's form: the standard SAE's weights under a config written before SAELens 6
import shutil
pre6 = f"{sys.argv[2]}/standard_pre6"
shutil.copytree(f"{sys.argv[2]}/standard", pre6)
json.dump({"d_in": raw.shape[1], "d_sae": d_sae, "hook_point": hook, "hook_point_layer": 3, "dtype": "float32",
           "model_name": "smollm2-135m-instruct", "activation_fn_str": "relu", "normalize_activations": "none",
           "apply_b_dec_to_input": True, "context_size": 128, "sae_lens_training_version": None},
          open(f"{pre6}/cfg.json", "w"))
again = SAE.load_from_disk(pre6, device="cpu")
with torch.no_grad():
    out["standard_pre6"] = again(raw).contiguous()
save_file(out, sys.argv[6])
print(json.dumps({"saved": True}))
"""


@pytest.mark.slow
def test_saes_saelens_itself_saved_import_and_reconstruct_as_saelens_does(tmp_path: Path) -> None:
    """SAELens (release :data:`SAELENS_VERSION`, in its own environment) builds a standard (ReLU), a JumpReLU and
    a TopK SAE on this run's d_in, saves each with its own ``save_model`` and writes one more folder with a
    config from before SAELens 6 (gpt2-small-res-jb's form); featint imports every folder, and its
    reconstruction of the run's raw activations equals SAELens's own forward of the folder to 1e-5 (relative),
    with the SAE's own number of active latents per token."""
    from safetensors.torch import save_file

    raw, normaliser, acts = _run_with_sae(tmp_path)
    save_file({"raw": raw.contiguous()}, str(tmp_path / "raw.safetensors"))
    script = tmp_path / "save_with_saelens.py"
    script.write_text(SAVE_WITH_SAELENS)
    saved = subprocess.run([str(_saelens_python()), str(script), str(tmp_path / "raw.safetensors"),
                            str(tmp_path / "saes"), str(F_), "8", "blocks.3.hook_resid_pre",
                            str(tmp_path / "theirs.safetensors")], capture_output=True, text=True, timeout=600,
                           check=False)
    assert saved.returncode == 0, saved.stderr[-3000:]
    theirs = load_file(str(tmp_path / "theirs.safetensors"))
    for name, activation in (("standard", "relu"), ("jumprelu", "jumprelu"), ("topk", "topk"),
                             ("standard_pre6", "relu")):
        import_sae(tmp_path / "saes" / name, acts, tmp_path / name, seed=0, n_features=F_, k=8)
        model, _ = load_model(tmp_path / name / "weights.safetensors")
        assert model.sae.activation == activation, name
        with torch.no_grad():
            rec = model(normaliser.apply(raw))
            ours = normaliser.invert(rec.total)
        error = float((ours - theirs[name]).norm() / theirs[name].norm())
        assert error < 1e-5, (name, error)
        if name in ("standard", "jumprelu", "topk"):
            assert torch.equal(rec.code.l0.float(), theirs[name + ".l0"]), name


def _hub_cache(root: Path, repo_id: str, folder: Path, name: str) -> str:
    """The Hugging Face cache layout (``models--<owner>--<repo>/refs/main`` naming a commit, the files under
    ``snapshots/<commit>/``) holding ``folder`` as ``name``, as a download leaves it; the commit hash."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit / name)
    return commit


def test_an_sae_folder_in_the_local_hugging_face_cache_imports_offline(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``sae.path: hf://<owner>/<repo>[@<revision>]/<folder>`` is read from the local Hugging Face cache, never
    downloaded; a repository or folder not there stops with the command that downloads it."""
    import huggingface_hub.constants

    from featint.saelens import local_sae_folder

    raw, normaliser, acts = _run_with_sae(tmp_path)
    cache = tmp_path / "hub"
    commit = _hub_cache(cache, "someone/smollm2-saes", tmp_path / "sae", "blocks.3.hook_resid_pre")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = "hf://someone/smollm2-saes/blocks.3.hook_resid_pre"
    assert local_sae_folder(path) == cache / "models--someone--smollm2-saes" / "snapshots" / commit / \
        "blocks.3.hook_resid_pre"
    assert local_sae_folder(f"hf://someone/smollm2-saes@{commit}/blocks.3.hook_resid_pre") == local_sae_folder(path)
    assert local_sae_folder(tmp_path / "sae") == tmp_path / "sae"
    import_sae(path, acts, tmp_path / "standard", seed=0, n_features=F_, k=8)
    model, _ = load_model(tmp_path / "standard" / "weights.safetensors")
    with torch.no_grad():
        ours = normaliser.invert(model(normaliser.apply(raw)).total)
    torch.testing.assert_close(ours, saelens_reconstruction(tmp_path / "sae", raw), rtol=1e-4, atol=1e-4)
    with pytest.raises(FeatintError, match="huggingface-cli download someone/other --include 'layers.3/\\*'"):
        local_sae_folder("hf://someone/other/layers.3")
    with pytest.raises(FeatintError, match="has no folder 'blocks.4.hook_resid_pre'"):
        local_sae_folder("hf://someone/smollm2-saes/blocks.4.hook_resid_pre")
    with pytest.raises(FeatintError, match="write a Hugging Face folder as"):
        local_sae_folder("hf://someone/smollm2-saes")
