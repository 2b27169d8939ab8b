"""The one splice: replace the residual stream at the extraction hook with a reconstruction.

``raw residual -> normaliser.apply -> reconstruct -> normaliser.invert -> residual`` at exactly the hook the
activations were extracted from (``HookPoint.name``), at the positions of a boolean mask (by default every
position but 0: BOS keeps its clean value). Behavioural evaluation and interventions both call
:func:`spliced_residual`.

Two ways to run the model with a splice, with the same result:

* :func:`run_with_splice` installs the splice as a transformer-lens forward hook on the TransformerBridge
  (the whole model runs);
* :class:`ModelContinuation` runs the blocks before the hook once (``stop_at_layer``), and then only the
  blocks after it for each spliced residual. The bridge's own ``start_at_layer`` still executes the blocks
  before the hook, so for decoder stacks of the Llama / Mistral / Qwen / GPT-NeoX shape (``layers``,
  ``norm``, ``rotary_emb``, ``lm_head``) the continuation calls those modules directly; it checks itself
  against the bridge at construction and falls back to ``start_at_layer`` (correct, slower) when they differ.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

from featint.lm import HookPoint
from featint.normaliser import Normaliser

log = logging.getLogger(__name__)

Reconstruct = Callable[[torch.Tensor], torch.Tensor]

#: How far the direct continuation's logits may differ from the bridge's, relative to the largest logit, by the
#: LM's dtype: the two run the same blocks through different call paths, so they differ by rounding, which
#: grows with the dtype's precision (float16 and bfloat16 miss float32's bound by one to two orders).
CONTINUATION_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def continuation_tolerance(dtype: torch.dtype) -> float:
    return CONTINUATION_TOLERANCE.get(dtype, 1e-4)


def default_positions(batch: int, length: int, replace_position_zero: bool = False,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """The positions a splice replaces by default: all, or all but position 0 (BOS). [B, T] bool."""
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    if not replace_position_zero:
        mask[:, 0] = False
    return mask


def spliced_residual(
    residual: torch.Tensor,
    reconstruct: Reconstruct,
    normaliser: Normaliser | None = None,
    positions: torch.Tensor | None = None,
    replace_position_zero: bool = False,
) -> torch.Tensor:
    """The residual [B, T, d] with the ``positions`` mask [B, T] (default: all but position 0 unless
    ``replace_position_zero``) replaced by ``reconstruct`` of the raw vectors there, applied in normalised
    space when a normaliser is given. ``reconstruct`` maps [N, d] -> [N, d]."""
    if positions is None:
        positions = default_positions(residual.shape[0], residual.shape[1], replace_position_zero, residual.device)
    target = residual[positions]
    if normaliser is not None:
        replaced = normaliser.invert(reconstruct(normaliser.apply(target)))
    else:
        replaced = reconstruct(target)
    out = residual.clone()
    out[positions] = replaced.to(residual.dtype)
    return out


def run_with_splice(
    bridge: Any,
    tokens: torch.Tensor,
    hook: HookPoint,
    reconstruct: Reconstruct,
    normaliser: Normaliser | None = None,
    positions: torch.Tensor | None = None,
    replace_position_zero: bool = False,
) -> torch.Tensor:
    """Logits of the full model with the splice installed as a forward hook at ``hook.name``."""

    def replace(value: torch.Tensor, hook: Any) -> torch.Tensor:
        return spliced_residual(value, reconstruct, normaliser, positions, replace_position_zero)

    return bridge.run_with_hooks(tokens, fwd_hooks=[(hook.name, replace)])


class ModelContinuation:
    """The clean residual at a hook, and logits continued from any residual there (blocks after it only)."""

    def __init__(self, bridge: Any, hook: HookPoint, check_tokens: torch.Tensor | None = None) -> None:
        self.bridge = bridge
        self.hook = hook
        self._modules = self._direct_modules()  # resolved once: (base model, final norm, head) or None
        self.direct = self._modules is not None
        if self.direct:
            probe = check_tokens if check_tokens is not None else torch.arange(1, 17, device=self.device)[None]
            with torch.no_grad():
                residual = self.residual(probe)
                expected = bridge(residual, start_at_layer=hook.stop_at_layer)
                try:
                    difference = float((expected - self._direct_logits(residual)).abs().max())
                except (TypeError, ValueError, RuntimeError) as exc:  # an architecture with other signatures
                    log.info("direct continuation unavailable (%s)", exc)
                    difference = float("inf")
            if not difference <= continuation_tolerance(expected.dtype) * float(expected.abs().max().clamp_min(1.0)):
                log.warning("direct continuation after %s differs from the bridge's; using start_at_layer "
                            "(runs every block)", hook.name)
                self.direct = False
        log.info("continuation after %s: %s", hook.name,
                 "blocks after the hook only" if self.direct else "bridge start_at_layer (all blocks)")

    @property
    def device(self) -> torch.device:
        """Where the LM's weights are: every residual and token batch goes there."""
        return next(self.bridge.original_model.parameters()).device

    def _direct_modules(self) -> tuple[Any, Any, Any] | None:
        causal_lm = getattr(self.bridge, "original_model", None)
        base = getattr(causal_lm, "model", None) or getattr(causal_lm, "gpt_neox", None)
        needed = ("layers", "rotary_emb", "config")
        if base is None or not all(hasattr(base, name) for name in needed):
            return None
        norm = getattr(base, "norm", None) or getattr(base, "final_layer_norm", None)
        head = getattr(causal_lm, "lm_head", None) or getattr(causal_lm, "embed_out", None)
        if norm is None or head is None or not hasattr(sys.modules[type(base).__module__], "create_causal_mask"):
            return None
        return base, norm, head

    def _direct_logits(self, residual: torch.Tensor) -> torch.Tensor:
        assert self._modules is not None
        base, norm, head = self._modules
        create_causal_mask = sys.modules[type(base).__module__].create_causal_mask
        position_ids = torch.arange(residual.shape[1], device=residual.device)[None]
        mask = create_causal_mask(config=base.config, inputs_embeds=residual, attention_mask=None, cache=None,
                                  position_ids=position_ids)
        position_embeddings = base.rotary_emb(residual, position_ids=position_ids)
        hidden = residual
        for layer in base.layers[self.hook.stop_at_layer:]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                           position_ids=position_ids)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return head(norm(hidden))

    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        """Clean residual [B, T, d] at the hook (blocks before it only); ``tokens`` go to the LM's device first
        (the bridge does not move its inputs)."""
        return self.bridge(tokens.to(self.device), stop_at_layer=self.hook.stop_at_layer)

    def logits(self, residual: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] of the model continued from ``residual`` at the hook."""
        if self.direct:
            return self._direct_logits(residual)
        return self.bridge(residual, start_at_layer=self.hook.stop_at_layer)
