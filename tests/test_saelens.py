"""SAELens export: the exported folder has SAELens's fields, and its TopK forward on raw activations gives
featint's reconstruction mapped back to raw space."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from featint.config import Settings
from featint.errors import FeatintError
from featint.models import build_model, save_model
from featint.normaliser import Normaliser
from featint.saelens import CONFIG, WEIGHTS, export_saelens, saelens_reconstruction

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
