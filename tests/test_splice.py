"""Known answers of the one splice at the extraction hook."""

from __future__ import annotations

import math

import pytest
import torch

from featint.behaviour import kl_per_token, next_token_ce
from featint.lm import HookPoint
from featint.normaliser import Normaliser
from featint.splice import logits_from_residual, residual_at_hook, run_with_splice, spliced_residual

pytestmark = pytest.mark.slow

TEXT = "The river flows through the old town, past the market and the cathedral, towards the sea."


@pytest.fixture(scope="module")
def tokens(bridge) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = [bridge.tokenizer.bos_token_id] + bridge.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids, ids[:1] + ids[1:][::-1]], dtype=torch.long)


@pytest.fixture(scope="module")
def clean(bridge, tokens) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return bridge(tokens)


HOOK = HookPoint(layer=15, site="resid_pre")


@torch.no_grad()
def test_hook_value_is_hf_hidden_states(bridge, tokens) -> None:  # type: ignore[no-untyped-def]
    hidden = bridge.original_model(tokens, output_hidden_states=True).hidden_states
    assert torch.equal(residual_at_hook(bridge, tokens, HOOK), hidden[15])
    assert torch.equal(residual_at_hook(bridge, tokens, HookPoint(15, "resid_post")), hidden[16])


@torch.no_grad()
def test_identity_splice_gives_zero_kl_exactly(bridge, tokens, clean) -> None:  # type: ignore[no-untyped-def]
    spliced = run_with_splice(bridge, tokens, HOOK, lambda x: x, replace_position_zero=True)
    assert torch.equal(spliced, clean)
    assert kl_per_token(clean, spliced).abs().max().item() == 0.0


@torch.no_grad()
def test_continuing_from_the_cached_residual_equals_the_hooked_run(bridge, tokens, clean) -> None:  # type: ignore[no-untyped-def]
    residual = residual_at_hook(bridge, tokens, HOOK)
    assert torch.equal(logits_from_residual(bridge, residual, HOOK), clean)
    noisy = lambda x: x * 0.5  # noqa: E731
    via_hook = run_with_splice(bridge, tokens, HOOK, noisy)
    via_cache = logits_from_residual(bridge, spliced_residual(residual, noisy), HOOK)
    torch.testing.assert_close(via_hook, via_cache, rtol=0, atol=1e-4)


@torch.no_grad()
def test_normaliser_round_trip_splice_gives_near_zero_kl(bridge, tokens, clean) -> None:  # type: ignore[no-untyped-def]
    residual = residual_at_hook(bridge, tokens, HOOK)
    normaliser = Normaliser.fit([residual[:, 1:].reshape(-1, 576)], kind="zscore", hook_name=HOOK.name)
    spliced = run_with_splice(bridge, tokens, HOOK, lambda z: z, normaliser=normaliser)
    kl = kl_per_token(clean, spliced)
    assert kl.max().item() < 1e-6
    assert kl[:, 0].abs().max().item() == 0.0  # position 0 untouched


@torch.no_grad()
def test_zero_ablation_hurts_and_ce_is_sane(bridge, tokens, clean) -> None:  # type: ignore[no-untyped-def]
    zeroed = run_with_splice(bridge, tokens, HOOK, torch.zeros_like)
    kl = kl_per_token(clean, zeroed)
    assert kl[:, 1:].mean().item() > 1.0
    ce_clean = next_token_ce(clean, tokens)
    ce_zero = next_token_ce(zeroed, tokens)
    assert 0.5 < ce_clean[0].mean().item() < 8.0  # forward text is predictable
    assert ce_zero[0].mean().item() > ce_clean[0].mean().item()


def test_kl_known_answer() -> None:
    p = torch.tensor([[0.0, 0.0]])  # uniform
    q = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_per_token(p, q, chunk_tokens=1).item() == pytest.approx(expected, rel=1e-6)
