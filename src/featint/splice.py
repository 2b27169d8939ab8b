"""The one splice: replace the residual stream at the extraction hook with a reconstruction.

``raw residual -> normaliser.apply -> reconstruct -> normaliser.invert -> residual`` at exactly the hook the
activations were extracted from (``HookPoint.name``), via transformer-lens hooks on the TransformerBridge.
Position 0 (BOS) keeps its clean value unless asked otherwise. Behavioural evaluation and interventions
both call :func:`spliced_residual`; :func:`run_with_splice` runs the whole model with the splice as a hook,
:func:`logits_from_residual` runs only the blocks after the hook from a cached residual (same result, used
to evaluate many conditions on one clean forward).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from featint.lm import HookPoint
from featint.normaliser import Normaliser

Reconstruct = Callable[[torch.Tensor], torch.Tensor]


def spliced_residual(
    residual: torch.Tensor,
    reconstruct: Reconstruct,
    normaliser: Normaliser | None = None,
    replace_position_zero: bool = False,
) -> torch.Tensor:
    """The residual [B, T, d] with positions replaced by ``reconstruct`` (applied in normalised space when a
    normaliser is given). ``reconstruct`` maps [N, d] -> [N, d]."""
    batch, length, d = residual.shape
    start = 0 if replace_position_zero else 1
    target = residual[:, start:, :].reshape(-1, d)
    if normaliser is not None:
        replaced = normaliser.invert(reconstruct(normaliser.apply(target)))
    else:
        replaced = reconstruct(target)
    out = residual.clone()
    out[:, start:, :] = replaced.reshape(batch, length - start, d).to(residual.dtype)
    return out


def residual_at_hook(bridge: Any, tokens: torch.Tensor, hook: HookPoint) -> torch.Tensor:
    """Clean residual at the hook, running only the blocks before it."""
    return bridge(tokens, stop_at_layer=hook.stop_at_layer)


def logits_from_residual(bridge: Any, residual: torch.Tensor, hook: HookPoint) -> torch.Tensor:
    """Logits of the model continued from ``residual`` at the hook (blocks after the hook only)."""
    return bridge(residual, start_at_layer=hook.stop_at_layer)


def run_with_splice(
    bridge: Any,
    tokens: torch.Tensor,
    hook: HookPoint,
    reconstruct: Reconstruct,
    normaliser: Normaliser | None = None,
    replace_position_zero: bool = False,
) -> torch.Tensor:
    """Logits of the full model with the splice installed as a forward hook at ``hook.name``."""

    def replace(value: torch.Tensor, hook: Any) -> torch.Tensor:  # noqa: ARG001 - transformer-lens signature
        return spliced_residual(value, reconstruct, normaliser, replace_position_zero)

    return bridge.run_with_hooks(tokens, fwd_hooks=[(hook.name, replace)])
