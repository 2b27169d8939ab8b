"""SAELens export: the exported folder has SAELens's fields, and its TopK forward on raw activations gives
featint's reconstruction mapped back to raw space."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from featint.config import Settings
from featint.errors import FeatintError
from featint.models import build_model, load_model, save_model
from featint.normaliser import Normaliser
from featint.saelens import CONFIG, WEIGHTS, export_saelens, import_saelens, saelens_reconstruction

D, F_ = 24, 96


@pytest.mark.parametrize("kind", ["standard", "standard_refit"])
def test_exported_sae_reconstructs_raw_activations_as_featint_does(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    raw = torch.randn(512, D) * torch.linspace(0.5, 3.0, D) + torch.linspace(-2.0, 2.0, D)
    normaliser = Normaliser.fit([raw], "zscore", "blocks.3.hook_resid_pre")
    normaliser.save(tmp_path / "normaliser.safetensors")
    shapes = Settings.from_dict({"sae": {"n_features": F_, "k": 8}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    standard = build_model("standard", D, shapes.sae, shapes.nfm)
    with torch.no_grad():  # a trained-looking SAE: nonzero biases, decoder rows of varied norms
        standard.sae.b_dec.normal_(std=0.3)
        standard.sae.b_enc.normal_(std=0.1)
        standard.sae.W_dec.mul_(torch.rand(F_, 1) * 3)
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
    assert written["meta"]["hook_name"] == "blocks.3.hook_resid_pre"
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
    shapes = Settings.from_dict({"sae": {"n_features": F_, "k": 8}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    standard = build_model("standard", D, shapes.sae, shapes.nfm)
    with torch.no_grad():
        standard.sae.b_dec.normal_(std=0.3)
        standard.sae.b_enc.normal_(std=0.1)
        standard.sae.W_dec.mul_(torch.rand(F_, 1) * 3)
    save_model(standard, tmp_path / "weights.safetensors", {"hook_name": exporting.hook_name, "seed": 0})
    export_saelens(tmp_path / "weights.safetensors", tmp_path / "exporting.safetensors", tmp_path / "sae", "m")
    return raw, normaliser, acts


def test_an_imported_saelens_sae_reconstructs_raw_activations_as_saelens_does(tmp_path: Path) -> None:
    """Round trip: export with one run's normaliser, import into a run with another; the imported standard
    model, applied in that run's normalised space, reconstructs raw activations exactly as SAELens's forward
    of the folder does."""
    raw, normaliser, acts = _run_with_sae(tmp_path)
    import_saelens(tmp_path / "sae", acts, tmp_path / "standard", seed=2, n_features=F_, k=8)
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
    ("architecture", "TopK SAEs only"), ("missing", "has no cfg.json")])
def test_a_mismatched_saelens_sae_stops_with_a_clear_message(change: str, message: str, tmp_path: Path) -> None:
    _, _, acts = _run_with_sae(tmp_path, hook="blocks.5.hook_resid_pre" if change == "hook" else
                               "blocks.3.hook_resid_pre")
    folder = tmp_path / "sae"
    cfg = json.loads((folder / CONFIG).read_text())
    if change == "d_in":
        cfg["d_in"] = D + 1
    if change == "architecture":
        cfg["architecture"] = "jumprelu"
    (folder / CONFIG).write_text(json.dumps(cfg))
    if change == "missing":
        (folder / CONFIG).unlink()
    with pytest.raises(FeatintError, match=message):
        import_saelens(folder, acts, tmp_path / "standard", seed=0, n_features=F_ + (change == "width"), k=8)
