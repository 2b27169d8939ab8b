"""Known answers of the TopK SAE, the NFM and the composite models (sparse vs dense, identities)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import get_args

import pytest
import torch
from simulated_cuda import simulated_cuda

from featint import kinds
from featint.config import Settings
from featint.kinds import KINDS, MODEL_KINDS
from featint.models import (
    HEADS,
    NFM,
    FeatureModel,
    PolyHead,
    SparseCode,
    ThresholdSAE,
    TopKSAE,
    build_model,
    exact_topk,
    joint_parameter_count,
    load_model,
    nfm_interaction_parameter_count,
    param_matched_width,
    save_model,
)

D, F_, K_TOP, EMB = 24, 96, 6, 8


def joint(seed: int = 0, dropout: float = 0.0) -> FeatureModel:
    torch.manual_seed(seed)
    return FeatureModel("joint", TopKSAE(D, F_, K_TOP), NFM(F_, D, EMB, dropout=dropout))


def test_topk_keeps_exactly_k() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(D, F_, K_TOP)
    with torch.no_grad():
        sae.b_enc += 1.0  # every pre-activation positive: exactly k survive the ReLU
    code, _ = sae.encode(torch.randn(50, D))
    assert code.indices.shape == (50, K_TOP)
    assert (code.l0 == K_TOP).all()
    dense = code.dense(F_)
    assert ((dense != 0).sum(1) == K_TOP).all()


def test_topk_selects_the_largest_relu_values() -> None:
    torch.manual_seed(1)
    sae = TopKSAE(D, F_, K_TOP)
    x = torch.randn(20, D)
    code, _ = sae.encode(x)
    pre = torch.relu(sae.pre_activations(x))
    expected = pre.topk(K_TOP, dim=1).values.sort(dim=1).values
    assert torch.allclose(code.values.sort(dim=1).values, expected)
    assert torch.allclose(code.dense(F_).gather(1, code.indices), code.values)


@pytest.mark.parametrize("n_features, k", [(4608, 92), (4608, 46), (768, 24), (96, 6), (97, 5), (64, 40)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_exact_topk_selects_what_torch_topk_selects(n_features: int, k: int, dtype: torch.dtype) -> None:
    """The blocked top-k gives torch.topk's values, and indices that point at them, at the default shapes and at
    shapes where it falls back (F not divisible, k too large); bfloat16 makes ties common."""
    torch.manual_seed(n_features + k)
    pre = torch.randn(300, n_features).to(dtype)
    values, indices = exact_topk(pre, k)
    reference = pre.topk(k, dim=-1, sorted=False).values
    assert indices.shape == (300, k)
    assert torch.equal(values.sort(-1).values, reference.sort(-1).values)
    assert torch.equal(pre.gather(1, indices), values)
    assert all(row.unique().numel() == k for row in indices)  # k distinct latents per row
    assert bool((indices.diff(dim=-1) > 0).all())  # ascending latent order: the canonical order


def test_exact_topk_order_does_not_depend_on_the_algorithm() -> None:
    """Without ties the blocked path (CPU) and plain torch.topk (any other device, or a shape where blocking does
    not pay) give the same indices in the same order, so the decoder's sums agree to the bit."""
    torch.manual_seed(0)
    pre = torch.randn(256, 4608, dtype=torch.float64)  # distinct values
    values, indices = exact_topk(pre, 92)
    expected_values, expected = pre.topk(92, dim=-1, sorted=False)
    expected, order = expected.sort(dim=-1)
    assert torch.equal(indices, expected)
    assert torch.equal(values, expected_values.gather(1, order))


def test_a_cpu_and_a_gpu_sae_give_the_same_bits() -> None:
    """At the default width and k (the CPU takes the blocked top-k, a GPU torch.topk) one training step's
    reconstruction and gradients agree to the bit: the selection's canonical order makes the decoder's sums
    identical (the SLURM test found CPU and simulated-GPU runs of one model drifting apart by rounding)."""
    results = []
    for device in ("cpu", "cuda"):
        with simulated_cuda() if device == "cuda" else contextlib.nullcontext():
            torch.manual_seed(5)
            sae = TopKSAE(32, 4608, 92).to(device)
            x = torch.randn(64, 32).to(device)
            code, _ = sae.encode(x)
            reconstruction = sae.decode(code)
            ((reconstruction - x) ** 2).mean().backward()
            results.append([reconstruction.detach().cpu()] + [p.grad.cpu() for p in sae.parameters()])
    for cpu, gpu in zip(*results):
        assert torch.equal(cpu, gpu)


def test_exact_topk_with_ties_at_the_boundary_picks_a_valid_top_k() -> None:
    """Values tied at the k-th place (whole blocks of equal maxima included): the selection holds every value
    above the tie and fills the rest from the tied ones, as torch.topk does up to the choice among ties."""
    torch.manual_seed(3)
    pre = torch.randint(0, 6, (200, 4608)).float()  # six distinct values: massive ties
    pre[:10] = 1.0  # rows that are all tied
    values, indices = exact_topk(pre, 92)
    reference = pre.topk(92, dim=-1, sorted=False).values
    assert torch.equal(values.sort(-1).values, reference.sort(-1).values)
    assert torch.equal(pre.gather(1, indices), values)
    assert all(row.unique().numel() == 92 for row in indices)


def test_sparse_and_dense_give_equal_outputs_and_gradients() -> None:
    model = joint()
    x = torch.randn(64, D)
    grads, outs = [], []
    for forward in (model.forward, model.forward_dense):
        model.zero_grad()
        rec = forward(x)
        loss = ((rec.total - x) ** 2).mean() + rec.embedding.pow(2).mean()  # type: ignore[union-attr]
        loss.backward()
        outs.append((rec.total.detach(), rec.embedding.detach()))  # type: ignore[union-attr]
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-7)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-8, msg=name)


@pytest.mark.parametrize("autocast", [False, True])
def test_the_sparse_and_dense_sae_kernels_give_equal_outputs_and_gradients(autocast: bool) -> None:
    """``training.kernels``: the encoder backward and the decoder as gathers over the k active latents or as
    products over all F; the same reconstruction and gradients (to rounding; bf16 rounding under autocast),
    AuxK's dead-latent selection included."""
    model = joint()
    x = torch.randn(64, D)
    dead = torch.zeros(model.sae.n_features, dtype=torch.bool)
    dead[::3] = True
    grads, outs = [], []
    for kernels in ("sparse", "dense"):
        model.sae.kernels = kernels
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            rec = model(x, aux_mask=dead, k_aux=4)
            loss = ((rec.total.float() - x) ** 2).mean() + rec.aux_code.values.float().pow(2).mean()  # type: ignore[union-attr]
        loss.backward()
        outs.append(rec.total.detach().float())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(outs[0], outs[1], **tolerance)
    assert grads[0].keys() == grads[1].keys() and "sae.W_enc" in grads[0] and "sae.b_enc" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], **tolerance, msg=name)


def test_bi_interaction_known_answer() -> None:
    """p = 0.5 * ((sum f v)^2 - sum (f v)^2) = sum_{i<j} f_i f_j v_i * v_j (element-wise)."""
    torch.manual_seed(2)
    nfm = NFM(F_, D, EMB, dropout=0.0)
    model = FeatureModel("joint", TopKSAE(D, F_, K_TOP), nfm)
    code, _ = model.sae.encode(torch.randn(5, D))
    pooled = nfm.bi_interaction(code)
    expected = torch.zeros(5, EMB)
    for n in range(5):
        for a in range(K_TOP):
            for b in range(a + 1, K_TOP):
                i, j = code.indices[n, a], code.indices[n, b]
                expected[n] += code.values[n, a] * code.values[n, b] * nfm.V[i] * nfm.V[j]
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-7)


def test_joint_with_zero_nfm_equals_its_sae() -> None:
    model = joint()
    with torch.no_grad():
        model.nfm.V.zero_()  # type: ignore[union-attr]
        model.nfm.W_lin.zero_()  # type: ignore[union-attr]
        model.nfm.b_lin.zero_()  # type: ignore[union-attr]
        model.nfm.mlp2.bias.zero_()  # type: ignore[union-attr]
    x = torch.randn(30, D)
    rec = model(x)
    standalone = FeatureModel("standard", model.sae)(x)
    assert torch.equal(rec.total, standalone.total)
    assert torch.equal(rec.component("sae"), rec.total)


def test_unit_norm_decoder_stays_unit_and_grad_is_projected() -> None:
    torch.manual_seed(3)
    sae = TopKSAE(D, F_, K_TOP, decoder_norm="unit")
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F_))
    x = torch.randn(40, D)
    loss = ((FeatureModel("standard", sae)(x).total - x) ** 2).mean()
    loss.backward()
    sae.project_decoder_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-7  # type: ignore[operator]
    with torch.no_grad():
        sae.W_dec -= 0.5 * sae.W_dec.grad  # type: ignore[operator]
    sae.normalise_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F_))


def test_free_decoder_init_matches_the_papers_scale() -> None:
    torch.manual_seed(4)
    sae = TopKSAE(576, 4608, 92)
    # U(+-1/sqrt(F)) per entry: E||d_i||^2 = d / (3 F)
    assert sae.W_dec.pow(2).sum(1).mean().item() == pytest.approx(576 / (3 * 4608), rel=0.02)
    assert torch.equal(sae.W_enc, sae.W_dec)  # tied initialisation


def test_auxk_selection_only_uses_dead_latents() -> None:
    torch.manual_seed(5)
    sae = TopKSAE(D, F_, K_TOP)
    dead = torch.zeros(F_, dtype=torch.bool)
    dead[:10] = True
    _, aux = sae.encode(torch.randn(8, D), aux_mask=dead, k_aux=4)
    assert aux is not None and aux.indices.shape == (8, 4)
    assert (aux.indices < 10).all()


def test_parameter_counts_and_param_matched_width() -> None:
    settings = Settings.from_dict({"sae": {"n_features": F_, "k": K_TOP}, "nfm": {"embed_dim": EMB,
                                                                                "truncated_k": 2}})
    torch.manual_seed(0)
    standard = build_model("standard", D, settings.sae, settings.nfm)
    counts = {kind: build_model(kind, D, settings.sae, settings.nfm, standard).parameter_counts()
              for kind in MODEL_KINDS}
    assert counts["joint"]["total"] == joint_parameter_count(D, settings.sae, settings.nfm)
    assert counts["joint"]["sae"] == 2 * D * F_ + F_ + D
    assert counts["joint"]["linear"] == F_ * D + D
    assert counts["joint"]["nfm_embeddings"] == F_ * EMB
    assert counts["joint"]["nfm_interaction_mlp"] == EMB * EMB + EMB + EMB * D + D
    assert "linear" not in counts["joint_no_linear"] and "nfm_embeddings" not in counts["joint_no_interaction"]
    matched = counts["param_matched"]["total"]
    assert abs(matched - counts["joint"]["total"]) <= 2 * D + 1
    assert param_matched_width(D, counts["joint"]["total"]) > F_


def test_paper_parameter_breakdown() -> None:
    """The paper's 496,106,700 parameters (d=3200, F=50,000, K=300) from the same formula."""
    settings = Settings.from_dict({"sae": {"n_features": 50_000, "k": 1024}, "nfm": {"embed_dim": 300}})
    paper_sae_without_b_dec = 2 * 3200 * 50_000 + 50_000  # the author's SAE had no decoder bias
    assert joint_parameter_count(3200, settings.sae, settings.nfm) - 3200 == paper_sae_without_b_dec + 176_056_700
    assert paper_sae_without_b_dec + 176_056_700 == 496_106_700


def test_sequential_freezes_the_sae_and_truncation_is_named(tmp_path: Path) -> None:
    settings = Settings.from_dict({"sae": {"n_features": F_, "k": K_TOP}, "nfm": {"embed_dim": EMB,
                                                                                "truncated_k": 2}})
    torch.manual_seed(0)
    standard = build_model("standard", D, settings.sae, settings.nfm)
    sequential = build_model("sequential", D, settings.sae, settings.nfm, standard)
    truncated = build_model("sequential_truncated", D, settings.sae, settings.nfm, standard)
    assert sequential.infer_k == K_TOP and truncated.infer_k == 2
    trainable = {id(p) for p in sequential.trainable_parameters()}
    assert trainable == {id(p) for p in sequential.nfm.parameters()}  # type: ignore[union-attr]
    assert not any(p.requires_grad for p in sequential.sae.parameters())
    refit = build_model("standard_refit", D, settings.sae, settings.nfm, standard)
    assert {id(p) for p in refit.trainable_parameters()} == {id(refit.sae.W_dec), id(refit.sae.b_dec)}
    x = torch.randn(10, D)
    assert torch.equal(sequential(x).sae, standard(x).total)
    torch.testing.assert_close(refit(x).total, standard(x).total)
    # the refit trains b_dec and W_dec, but its codes stay the standard SAE's
    with torch.no_grad():
        refit.sae.b_dec += 5.0
        refit.sae.W_dec *= 2.0
    same = refit(x).code, standard(x).code
    assert torch.equal(same[0].indices.sort(1).values, same[1].indices.sort(1).values)
    torch.testing.assert_close(same[0].values.sort(1).values, same[1].values.sort(1).values)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = joint(dropout=0.15)
    save_model(model, tmp_path / "w.safetensors", {"hook_name": "blocks.15.hook_resid_pre", "seed": 3})
    loaded, extra = load_model(tmp_path / "w.safetensors")
    assert extra == {"hook_name": "blocks.15.hook_resid_pre", "seed": 3}
    model.eval()
    x = torch.randn(7, D)
    assert torch.equal(loaded(x).total, model(x).total)
    assert loaded.nfm.dropout.p == 0.15  # type: ignore[union-attr]


def _settings(n_features: int = F_, embed: int = EMB) -> Settings:
    return Settings.from_dict({"sae": {"n_features": n_features, "k": K_TOP},
                               "nfm": {"embed_dim": embed, "truncated_k": 2}})


@pytest.mark.parametrize(("n_features", "d", "embed"), [(F_, D, EMB), (4608, 576, 52), (512, 64, 16)])
def test_rival_heads_match_the_nfm_interaction_pathways_parameter_count(n_features: int, d: int,
                                                                          embed: int) -> None:
    """Each rival keeps the NFM's linear term and replaces its interaction pathway by one of the same size
    (within one unit of the rival's width or rank; the linear map of x at most full rank)."""
    settings = _settings(n_features, embed)
    torch.manual_seed(0)
    standard = build_model("standard", d, settings.sae, settings.nfm)
    target = nfm_interaction_parameter_count(d, n_features, embed)
    sequential = build_model("sequential", d, settings.sae, settings.nfm, standard).parameter_counts()
    assert sequential["nfm_embeddings"] + sequential["nfm_interaction_mlp"] == target
    for kind, step in (("sequential_poly", 2 * n_features + d), ("sequential_mlp", n_features + 1 + d),
                       ("sequential_linear_input", 2 * d)):
        counts = build_model(kind, d, settings.sae, settings.nfm, standard).parameter_counts()
        assert counts["linear"] == n_features * d + d, kind
        pathway = counts["total"] - counts["sae"] - counts["linear"]
        if kind == "sequential_linear_input" and d * d <= target:
            assert pathway == d * d  # a full-rank map is all a linear map of x can have
        else:
            assert abs(pathway - target) <= step, (kind, pathway, target)


def test_poly_head_sums_pairwise_products_only() -> None:
    """Known answer: the sparse quadratic equals sum_{i != j} f_i f_j (u_i * w_j), computed by brute force."""
    torch.manual_seed(1)
    head = PolyHead(F_, D, rank=5)
    sae = TopKSAE(D, F_, K_TOP)
    code, _ = sae.encode(torch.randn(9, D))
    f = code.dense(F_).double()
    U, W = head.U.detach().double(), head.W.detach().double()
    brute = torch.zeros(9, 5, dtype=torch.float64)
    for i in range(F_):
        for j in range(F_):
            if i != j:
                brute += (f[:, i] * f[:, j])[:, None] * (U[i] * W[j])[None, :]
    torch.testing.assert_close(head.quadratic(code).double(), brute, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(head.quadratic_dense(f.float()).double(), brute, rtol=1e-4, atol=1e-5)
    # one active feature has no pair: the quadratic vanishes
    single = code.top(1)
    assert head.quadratic(single).abs().max() < 1e-6


def test_every_head_the_kinds_table_names_is_built_and_loaded_by_one_dispatch() -> None:
    assert set(get_args(kinds.Head)) == set(HEADS)
    assert {entry.head for entry in KINDS.values()} - {None} == set(HEADS)
    for name, cls in HEADS.items():
        assert cls.kind_name == name


def test_the_final_component_is_the_whole_model_for_kinds_with_a_head() -> None:
    for name, entry in KINDS.items():
        assert kinds.final_component(name) == ("sae" if entry.head is None else "full")
    with pytest.raises(ValueError, match="unknown model kind"):
        kinds.final_component("imported")


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_builds_trains_what_the_table_says_and_round_trips(kind: str, tmp_path: Path) -> None:
    entry = KINDS[kind]
    settings = _settings()
    torch.manual_seed(0)
    standard = build_model("standard", D, settings.sae, settings.nfm)
    model = build_model(kind, D, settings.sae, settings.nfm, standard).eval()
    assert (model.head is None) == entry.sae_only
    trainable = {id(p) for p in model.trainable_parameters()}
    if entry.trains == "head":
        assert model.head is not None and trainable == {id(p) for p in model.head.parameters()}
    elif entry.trains == "decoder":
        assert trainable == {id(model.sae.W_dec), id(model.sae.b_dec)}
    else:
        assert trainable == {id(p) for p in model.parameters()}
    x = torch.randn(11, D)
    rec = model(x)
    assert rec.total.shape == x.shape
    assert (rec.interaction is not None) == (entry.head is not None and entry.interaction)
    assert (rec.embedding is not None) == entry.has_embedding
    # gradients reach exactly the trainable parameters
    ((rec.total - x) ** 2).mean().backward()
    for parameter in model.parameters():
        if id(parameter) in trainable and entry.trains != "all":
            assert parameter.grad is not None
    save_model(model, tmp_path / "w.safetensors", {"seed": 0})
    loaded, _ = load_model(tmp_path / "w.safetensors")
    assert loaded.kind == kind and loaded.infer_k == model.infer_k
    torch.testing.assert_close(loaded(x).total, rec.total)


def test_linear_input_head_fits_an_error_that_is_linear_in_x() -> None:
    """The SAE's residual made exactly linear in x: the sequential_linear_input head removes it, the NFM's
    linear code term alone cannot."""
    torch.manual_seed(2)
    settings = _settings()
    standard = build_model("standard", D, settings.sae, settings.nfm).eval()
    model = build_model("sequential_linear_input", D, settings.sae, settings.nfm, standard)
    A = torch.randn(D, D) * 0.3
    x = torch.randn(4096, D)
    target = standard(x).total.detach() + x @ A
    optimiser = torch.optim.Adam(list(model.trainable_parameters()), lr=1e-2)
    for _ in range(400):
        optimiser.zero_grad()
        loss = ((model(x).total - target) ** 2).mean()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        residual = ((target - standard(x).total) ** 2).mean()
    assert float(loss.detach()) < 0.02 * float(residual)


# ---------------------------------------------------------------------------------------------------------
# Threshold SAEs (imported ReLU / JumpReLU): a varying number of active latents per token


def _jumprelu(activation: str = "jumprelu", d: int = 12, n_features: int = 48) -> ThresholdSAE:
    torch.manual_seed(5)
    sae = ThresholdSAE(d, n_features, activation)
    with torch.no_grad():
        sae.b_enc.normal_(std=0.2)
        sae.b_dec.normal_(std=0.3)
        sae.threshold.uniform_(0.0, 0.4)
    return sae


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_a_threshold_sae_codes_every_active_latent_and_pads_with_zeros(activation: str) -> None:
    sae = _jumprelu(activation)
    x = torch.randn(200, 12)
    pre = sae.pre_activations(x)
    expected = torch.relu(pre) * ((pre > sae.threshold) if activation == "jumprelu" else 1)
    with torch.no_grad():
        code, aux = sae.encode(x)
    assert aux is None
    assert torch.equal(code.dense(48), expected.detach())  # every active latent, exactly
    l0 = (expected > 0).sum(1)
    assert l0.min() < l0.max() and code.width == int(l0.max())  # varying; padded to the batch's most
    active = code.values > 0
    assert torch.equal(active.sum(1), l0) and not (active[:, 1:] & ~active[:, :-1]).any()  # active first
    assert all(len(set(row)) == code.width for row in code.indices.tolist())  # distinct latents: dense() is exact
    torch.testing.assert_close(sae.decode(code), expected.detach() @ sae.W_dec.detach() + sae.b_dec.detach())
    capped, _ = sae.encode(x, 3)  # a smaller k keeps each token's 3 largest (sequential_truncated)
    assert capped.width == 3 and torch.equal(capped.dense(48), code.top(3).dense(48))


def test_zero_valued_entries_change_no_head_nor_the_decoder() -> None:
    """Padding a code (or concatenating codes of different widths) leaves the decoder, the NFM's bi-interaction
    and the whole NFM head unchanged: a zero entry adds nothing to sum f_i v_i nor to sum f_i^2 v_i^2."""
    sae = _jumprelu()
    torch.manual_seed(6)
    nfm = NFM(48, 12, embed_dim=5).eval()
    with torch.no_grad():
        code, _ = sae.encode(torch.randn(64, 12))
        padded = code.pad(code.width + 7, 48)
        assert padded.width == code.width + 7 and torch.equal(padded.dense(48), code.dense(48))
        assert torch.equal(sae.decode(padded), sae.decode(code))
        assert torch.equal(nfm.bi_interaction(padded), nfm.bi_interaction(code))
        torch.testing.assert_close(nfm.bi_interaction(code), nfm.bi_interaction_dense(code.dense(48)))
        for left, right in zip(vars(nfm(padded)).values(), vars(nfm(code)).values()):
            assert torch.equal(left, right)
        halves = SparseCode.cat([sae.encode(torch.randn(10, 12) * 0.1)[0], code], 48)
        assert halves.width == max(code.width, 1) and torch.equal(halves.dense(48)[10:], code.dense(48))


def test_a_threshold_sae_saves_loads_and_the_frozen_kinds_build_on_it(tmp_path: Path) -> None:
    sae = _jumprelu()
    standard = FeatureModel("standard", sae)
    save_model(standard, tmp_path / "w.safetensors", {})
    loaded, _ = load_model(tmp_path / "w.safetensors")
    assert isinstance(loaded.sae, ThresholdSAE) and loaded.sae.activation == "jumprelu"
    assert torch.equal(loaded.sae.threshold, sae.threshold)
    x = torch.randn(30, 12)
    shapes = Settings.from_dict({"sae": {"n_features": 48, "k": 4}, "nfm": {"embed_dim": 4, "truncated_k": 2}})
    with torch.no_grad():
        assert torch.equal(loaded(x).total, standard(x).total)
        sequential = build_model("sequential", 12, shapes.sae, shapes.nfm, standard=loaded)
        assert torch.equal(sequential(x).sae, standard(x).total)  # every active latent, not sae.k of them
        truncated = build_model("sequential_truncated", 12, shapes.sae, shapes.nfm, standard=loaded)
        assert truncated(x).code.width == 2
        refit = build_model("standard_refit", 12, shapes.sae, shapes.nfm, standard=loaded)
        assert not refit.sae.pre_encoder_bias and torch.equal(refit(x).code.dense(48) > 0,
                                                              standard(x).code.dense(48) > 0)
    assert standard.parameter_counts()["total"] == ThresholdSAE.n_parameters_for(12, 48)


def test_a_threshold_sae_and_its_padded_codes_stay_on_the_device() -> None:
    """On a (simulated) GPU a JumpReLU SAE encodes, pads, concatenates and decodes where it lives, and gives
    the CPU's codes and reconstruction."""
    results = []
    for device in ("cpu", "cuda"):
        with simulated_cuda() if device == "cuda" else contextlib.nullcontext():
            sae = _jumprelu().to(device)
            x = torch.randn(40, 12, generator=torch.Generator().manual_seed(3)).to(device)
            with torch.no_grad():
                code, _ = sae.encode(x)
                padded = SparseCode.cat([code, sae.encode(x[:5], 2)[0]], 48).pad(code.width + 2, 48)
                assert padded.indices.device.type == device and padded.values.device.type == device
                results.append((code.dense(48).cpu(), sae.decode(padded).cpu()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
