"""Known answers of the one splice at the extraction hook."""

from __future__ import annotations

import pytest
import torch

from featint.behaviour import kl_per_token, next_token_ce
from featint.lm import HookPoint
from featint.normaliser import Normaliser
from featint.splice import ModelContinuation, default_positions, run_with_splice, spliced_residual

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


@pytest.fixture(scope="module")
def continuation(bridge):  # type: ignore[no-untyped-def]
    return ModelContinuation(bridge, HOOK)


@torch.no_grad()
def test_hook_value_is_hf_hidden_states(bridge, tokens, continuation) -> None:  # type: ignore[no-untyped-def]
    hidden = bridge.original_model(tokens, output_hidden_states=True).hidden_states
    assert torch.equal(continuation.residual(tokens), hidden[15])
    assert torch.equal(ModelContinuation(bridge, HookPoint(15, "resid_post")).residual(tokens), hidden[16])


@torch.no_grad()
def test_identity_splice_gives_zero_kl_exactly(bridge, tokens, clean) -> None:  # type: ignore[no-untyped-def]
    spliced = run_with_splice(bridge, tokens, HOOK, lambda x: x, replace_position_zero=True)
    assert torch.equal(spliced, clean)
    assert kl_per_token(clean, spliced).abs().max().item() == 0.0


@torch.no_grad()
def test_continuing_from_the_cached_residual_equals_the_hooked_run(bridge, tokens, clean, continuation) -> None:  # type: ignore[no-untyped-def]
    assert continuation.direct  # the blocks before the hook are not run again
    residual = continuation.residual(tokens)
    assert torch.equal(continuation.logits(residual), clean)
    noisy = lambda x: x * 0.5
    via_hook = run_with_splice(bridge, tokens, HOOK, noisy)
    via_cache = continuation.logits(spliced_residual(residual, noisy))
    torch.testing.assert_close(via_hook, via_cache, rtol=0, atol=1e-4)
    via_bridge = bridge(spliced_residual(residual, noisy), start_at_layer=HOOK.stop_at_layer)
    torch.testing.assert_close(via_bridge, via_cache, rtol=0, atol=1e-4)


@torch.no_grad()
def test_fallback_continuation_matches(bridge, tokens, clean) -> None:  # type: ignore[no-untyped-def]
    fallback = ModelContinuation(bridge, HOOK)
    fallback.direct = False  # what an architecture without the direct path gets
    assert torch.equal(fallback.logits(fallback.residual(tokens)), clean)


@torch.no_grad()
def test_splice_replaces_exactly_the_masked_positions(continuation, tokens) -> None:  # type: ignore[no-untyped-def]
    residual = continuation.residual(tokens)
    positions = default_positions(*tokens.shape)
    positions[1, 3:] = False
    out = spliced_residual(residual, torch.zeros_like, positions=positions)
    assert torch.equal(out[~positions], residual[~positions])
    assert out[positions].abs().max().item() == 0.0
    assert torch.equal(out[:, 0], residual[:, 0])  # BOS untouched by default


@torch.no_grad()
def test_normaliser_round_trip_splice_gives_near_zero_kl(bridge, tokens, clean, continuation) -> None:  # type: ignore[no-untyped-def]
    residual = continuation.residual(tokens)
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


@pytest.mark.parametrize("architecture", ["gpt_neox", "gpt2"])
@torch.no_grad()
def test_continuation_on_other_architectures(tmp_path, embedded_lm_dir, architecture: str) -> None:  # type: ignore[no-untyped-def]
    """Pythia-style models take the direct path; GPT-2 (absolute positions) falls back; both match the bridge."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    from featint.lm import load_bridge

    torch.manual_seed(0)
    if architecture == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=49152, hidden_size=64, intermediate_size=128,
                                                 num_hidden_layers=3, num_attention_heads=4))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=49152, n_embd=64, n_layer=3, n_head=4))
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(embedded_lm_dir).save_pretrained(tmp_path)
    bridge = load_bridge(tmp_path)
    hook = HookPoint(layer=1, site="resid_pre")
    continuation = ModelContinuation(bridge, hook)
    assert continuation.direct == (architecture == "gpt_neox")
    tokens = torch.randint(100, 40000, (2, 10))
    expected = bridge(tokens)
    torch.testing.assert_close(continuation.logits(continuation.residual(tokens)), expected, rtol=0, atol=1e-4)


@torch.no_grad()
def test_bf16_autocast_reconstruction_splices_like_float32(bridge, tokens, clean, continuation) -> None:  # type: ignore[no-untyped-def]
    """A joint model run under bf16 autocast (the GPU configs) splices in: finite logits, KL within bf16 rounding
    of the float32 splice."""
    from featint.config import Settings
    from featint.models import build_model

    residual = continuation.residual(tokens)
    normaliser = Normaliser.fit([residual[:, 1:].reshape(-1, 576)], kind="zscore", hook_name=HOOK.name)
    shapes = Settings.from_dict({"sae": {"n_features": 1152, "k": 32}, "nfm": {"embed_dim": 16}})
    torch.manual_seed(0)
    model = build_model("joint", 576, shapes.sae, shapes.nfm).eval()

    def bf16(z: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(z).total.float()

    kl32 = kl_per_token(clean, continuation.logits(spliced_residual(residual, lambda z: model(z).total, normaliser)))
    kl16 = kl_per_token(clean, continuation.logits(spliced_residual(residual, bf16, normaliser)))
    assert torch.isfinite(kl16).all() and kl32.mean() > 0.01  # an untrained model changes the output
    assert kl16.mean().item() == pytest.approx(kl32.mean().item(), rel=0.05)
