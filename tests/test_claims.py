"""The claims stage's inputs: exactly the files its rule hands over."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featint.claims import REQUIRED_TABLES, TABLES, Artefacts, ClaimsError


def _tables(tmp_path: Path, names: tuple[str, ...]) -> dict[str, Path]:
    """The made-up tables ``names`` written to ``tmp_path`` (an empty one where none is made up)."""
    made_up, paths = _made_up(), {}
    for name in names:
        paths[name] = tmp_path / f"{name}.parquet"
        made_up.get(name, pd.DataFrame({"model": pd.Series(dtype="str")})).to_parquet(paths[name])
    return paths


def test_the_claims_read_only_the_tables_handed_over(tmp_path: Path) -> None:
    """A convergence summary left on disk by an earlier config sits where the workflow writes it; not handed
    over, it is not read (the claims used to pick it up whenever it existed)."""
    paths = _tables(tmp_path, REQUIRED_TABLES)
    stale = tmp_path / "convergence" / "summary.parquet"
    stale.parent.mkdir()
    _made_up()["convergence"].to_parquet(stale)
    artefacts = Artefacts.load(paths)
    assert artefacts.convergence.empty and artefacts.budget.empty
    assert artefacts.geometry.equals(_made_up()["geometry"])
    handed = Artefacts.load({**paths, "convergence": stale})
    assert handed.convergence["model"].tolist() == ["standard", "joint"]
    assert set(TABLES) == {f.name for f in Artefacts.__dataclass_fields__.values()}  # type: ignore[attr-defined]


def test_a_missing_claims_input_is_named_with_its_flag_and_writer(tmp_path: Path) -> None:
    paths = _tables(tmp_path, REQUIRED_TABLES)
    del paths["reconstruction_summary"]
    with pytest.raises(ClaimsError, match="reconstruction_summary table .*--reconstruction-summary"):
        Artefacts.load(paths)
    with pytest.raises(ClaimsError, match=r"budget\.parquet does not exist; run the rule that writes it"):
        Artefacts.load({**_tables(tmp_path, REQUIRED_TABLES), "budget": tmp_path / "budget.parquet"})
    with pytest.raises(ClaimsError, match="unknown claims inputs"):
        Artefacts.load({**_tables(tmp_path, REQUIRED_TABLES), "convergnce": tmp_path / "x.parquet"})


def test_a_table_an_earlier_version_wrote_stops_with_the_table_file_and_column(tmp_path: Path) -> None:
    from featint.tables import TableError

    paths = _tables(tmp_path, REQUIRED_TABLES)
    pd.read_parquet(paths["reconstruction_summary"]).drop(columns="interval").to_parquet(paths["reconstruction_summary"])
    with pytest.raises(TableError, match=r"reconstruction summary table .*missing \['interval'\].*rerun the rule"):
        Artefacts.load(paths)


# ---------------------------------------------------------------------------------------------------------
# Every registered claim on small made-up artefacts (known answers; no DAG)

SEEDS = (0, 1)


def _made_up() -> dict[str, pd.DataFrame]:
    """One small table per input with the rows every claim reads; values chosen so that each claim's answer is
    known (seed s adds s / 100 where a value varies over seeds)."""
    test = {"run": "r", "split": "test", "token_set": "selected"}
    recon = [
        ("standard", "sae", "variance_explained_paper", None, 0.80),
        ("standard", "sae", "fvu", None, 0.25),
        ("sequential_truncated", "model", "improvement_mse", "own_sae", 0.30),
        ("sequential", "model", "linear_share", None, 0.60),
        ("joint", "model", "improvement_mse", "own_sae", 0.40),
        ("joint", "model", "linear_share", None, 0.70),
    ]
    reconstruction = pd.DataFrame([{**test, "model": m, "seed": s, "component": c, "metric": k, "reference": ref,
                                    "value": v + s / 100} for m, c, k, ref, v in recon for s in SEEDS])
    summary = pd.DataFrame([{**test, "model": m, "component": "model", "metric": "improvement_mse",
                             "reference": "standard", "mean": v, "sd": 0.01, "n_seeds": 2, "minimum": v - 0.01,
                             "maximum": v + 0.01, "ci_low": v - 0.01, "ci_high": v + 0.01,
                             "interval": "95% bootstrap over test documents, mean over seeds",
                             "n_documents": 120, "n_tokens": 34567}
                            for m, v in (("sequential", 0.05), ("joint", 0.02))])
    behaviour_rows = [
        ("standard", "sae", "pathology_ratio", "epsilon_own_norm", 3.0),
        ("sequential", "full", "pathology_ratio", "epsilon_sae_norm", 2.0),
        ("sequential", "full", "pathology_ratio", "epsilon_own_norm", 2.5),
        ("sequential", "sae+linear", "improvement_kl", "own_sae", 0.10),
        ("sequential", "full", "improvement_kl", "standard", 0.12),
        ("joint", "full", "improvement_kl", "own_sae", 0.50),
        ("joint", "full", "improvement_kl", "standard", 0.08),
        ("joint", "sae+interaction", "improvement_kl", "own_sae", 0.20),
        ("joint", "sae+interaction", "improvement_kl", "standard", -0.30),
        ("joint", "full", "improvement_ce", "own_sae", 0.05),
        ("joint", "full", "improvement_delta_ce", "standard", 0.07),
        ("standard", "sae", "mean_kl", None, 0.40),
        ("joint", "full", "mean_kl", None, 0.30),
        ("joint_no_interaction", "full", "mean_kl", None, 0.35),
    ]
    behaviour = pd.DataFrame([{"run": "r", "n_documents": 60, "n_windows": 90, "n_tokens": 11520,
                               "method": "document_window_bootstrap", "ci_level": 0.95, "model": m, "seed": pd.NA,
                               "n_seeds": 2, "condition": c, "metric": k, "reference": ref, "estimate": v,
                               "ci_low": v - 0.01, "ci_high": v + 0.01, "se": 0.005, "p_value": np.nan,
                               "description": "made up"} for m, c, k, ref, v in behaviour_rows])
    parameters = pd.DataFrame([{"model": "joint", "seed": s, "component": c, "parameters": n, "share": n / 1000,
                                "trainable": 1000} for s in SEEDS
                               for c, n in (("sae", 500), ("linear", 300), ("nfm_embeddings", 150),
                                            ("nfm_interaction_mlp", 50), ("total", 1000))])
    geometry_rows = [
        ("joint", "pca_paper_components_for_90pct_of_truncated", None, 40.0),
        ("joint", "pca_centred_raw_components_for_90pct", "all", 50.0),
        ("joint", "squared_norm_component_mean_low", "all", 0.2),
        ("joint", "squared_norm_density_mode_low", "all", 0.3),
        ("joint", "squared_norm_component_mean_high", "all", 0.8),
        ("joint", "squared_norm_density_mode_high", "all", 0.9),
        ("joint", "spearman_squared_norm_vs_nfm_ratio", "all", 0.6),
        ("joint", "spearman_squared_norm_vs_activation_nfm_share", "fired", 0.1),
        ("joint", "verdict_bimodal", "all", 1.0),
        ("standard", "verdict_bimodal", "all", 0.0),
    ]
    geometry = pd.DataFrame([{"run": "r", "model": m, "seed": s, "metric": k, "value": v + s / 100,
                              "definition": "corrected", "subset": sub} for m, k, sub, v in geometry_rows
                             for s in SEEDS])
    interventions = pd.DataFrame([{"model": "sequential", "quantity": "secondary_F", "role": "top_ranked",
                                   "sentences": sentences, "effect": "formality:emotion", "seed": s,
                                   "value": v + s} for sentences, v in (("select", 12.0), ("test", 2.0))
                                  for s in SEEDS])
    unused = dict.fromkeys(("max_abs_delta", "sum_sq", "df", "partial_eta_sq", "coefficient", "se", "t", "p_wald_z",
                            "prompt_var", "word_var", "residual_var"), np.nan)
    clamps = pd.DataFrame([{"run": "r", "model": "sequential", "seed": s, "role": "selected_secondary",
                            "space": "secondary", "feature": 3, "mode": "multiply", "value": value,
                            "reference": "delta_vs_pipeline", "test": test_name,
                            "effect": "word_formality:word_emotion", **unused, "F": f + s + value, "p": p + s / 100,
                            "interaction_contrast": -(f + s) / 1000, "converged": None, "q": p + s / 10,
                            "significant_fdr": False}
                           for test_name, f, p in (("paper_difference_score_F", 5.0, 0.03),
                                                   ("mixedlm_crossed_prompt_word", 1.0, 0.40))
                           for s in SEEDS for value in (-4.0, 4.0)])
    comparisons = pd.DataFrame([{**test, "model": m, "reference": "sequential_linear_input", "seed": pd.NA,
                                 "n_seeds": 2, "metric": "improvement_mse", "estimate": v, "ci_low": v - 0.01,
                                 "ci_high": v + 0.01, "model_parameters": 900, "reference_parameters": 880,
                                 "n_documents": 120, "n_tokens": 34567}
                                for m, v in (("sequential", 0.01), ("sequential_mlp", 0.03))])
    convergence = pd.DataFrame([
        {"seed": 0, "tokens_default": 1000, "tokens_longer": 2000, "quantity": "test_fvu", "model": "standard",
         "reference": None, "default": 0.25, "longer": 0.2425, "change": -0.03, "change_kind": "relative",
         "threshold": 0.02, "threshold_definition": "max_relative_fvu_change", "passes": False},
        {"seed": 0, "tokens_default": 1000, "tokens_longer": 2000, "quantity": "improvement_mse", "model": "joint",
         "reference": "standard", "default": 0.02, "longer": 0.021, "change": 0.001, "change_kind": "absolute",
         "threshold": 0.002, "threshold_definition": "sd over 2 seeds", "passes": True}])
    budget = pd.DataFrame([
        {"quantity": "l_inf_improvement", "model": "joint", "reference": "standard", "factor": pd.NA,
         "estimate": 0.01, "ci_low": -0.02, "ci_high": 0.04, "n_seeds": 3, "at_edge": False},
        {"quantity": "l_inf", "model": "joint", "reference": None, "factor": pd.NA, "estimate": 0.17,
         "ci_low": 0.1, "ci_high": 0.2, "n_seeds": 3, "at_edge": False},
        {"quantity": "fvu", "model": "joint", "reference": None, "factor": 2.0, "estimate": 0.2,
         "ci_low": 0.19, "ci_high": 0.21, "n_seeds": 3, "at_edge": False}])
    integration = pd.DataFrame({"model": "standard", "seed": [0, 1, 0, 1],
                                "data": ["data", "data", "surrogate", "surrogate"], "target": "residual",
                                "pairs_tested": 400.0, "pairs_flagged": [0.0, 8.0, 4.0, 0.0],
                                "flagged_share": [0.0, 0.02, 0.01, 0.0], "median_z": 0.1,
                                "flagged_median_estimate": np.nan, "flagged_explained_share": 1e-4})
    return {"reconstruction": reconstruction, "reconstruction_summary": summary, "parameters": parameters,
            "comparisons": comparisons, "geometry": geometry, "behaviour": behaviour,
            "interventions": interventions, "clamps": clamps, "convergence": convergence, "budget": budget,
            "integration": integration}


class _Recording:
    """The artefacts, recording which tables are read."""

    def __init__(self, artefacts: Artefacts) -> None:
        self._artefacts, self.read = artefacts, set()

    def __getattr__(self, name: str) -> pd.DataFrame:
        self.read.add(name)
        return getattr(self._artefacts, name)


EXPECTED = {  # claim -> (ours under the paper's definition, ours corrected); NaN: the claim has no such value
    "sae_variance_explained": (0.805, 0.745),
    "sequential_error_reduction": (0.305, 0.05),
    "sequential_linear_share": (0.605, 0.605),
    "joint_improvement": (0.405, 0.02),
    "joint_linear_share": (0.705, 0.705),
    "sae_pathology_ratio": (3.0, 3.0),
    "sequential_pathology_ratio": (2.0, 2.5),
    "sequential_kl_reduction": (0.10, 0.12),
    "joint_kl_reduction": (0.50, 0.08),
    "joint_nonlinear_kl_reduction": (0.20, -0.30),
    "joint_ce_reduction": (0.05, 0.07),
    "nonlinear_share_of_improvement": (0.20 / 0.50, (0.35 - 0.30) / (0.40 - 0.30)),
    "interaction_parameter_share": (0.2, 0.2),
    "linear_parameter_share": (0.3, 0.3),
    "pca_components_90": (40.005, 50.005),
    "squared_norm_mode_low": (0.205, 0.305),
    "squared_norm_mode_high": (0.805, 0.905),
    "spearman_norm_vs_nfm": (0.605, 0.105),
    "secondary_anova_F": (12.5, 2.5),
    "clamp_interaction_F": (1.5, -2.5),  # F + seed + clamp value at clamp -4: mean over seeds 0, 1
    "clamp_interaction_p": (0.04, 0.5),  # the largest over seeds
    "clamp_interaction_effect": (0.0055, 0.0015),
    "nonlinear_vs_linear_control": (np.nan, 0.03),  # the best code-based head: sequential_mlp
    "budget_convergence": (np.nan, 0.03),
    "budget_extrapolated": (np.nan, 0.01),
    "dual_encoding": (np.nan, 0.01),
}


def test_every_registered_claim_reads_what_it_declares_and_gives_the_known_answer() -> None:
    from featint.claims import CLAIMS, Reader

    assert set(EXPECTED) == set(CLAIMS)
    artefacts = Artefacts(**_made_up())
    for claim_id, claim in CLAIMS.items():
        recording = _Recording(artefacts)
        ours = claim.extract(Reader(recording))  # type: ignore[arg-type]
        assert recording.read == set(claim.reads), claim_id
        paper, corrected = EXPECTED[claim_id]
        np.testing.assert_allclose([ours.paper_definition, ours.corrected], [paper, corrected], rtol=1e-9,
                                   err_msg=claim_id)
        assert claim.rests_on(Reader(artefacts)), claim_id
    reader = Reader(artefacts)
    assert CLAIMS["joint_improvement"].rests_on(reader) == "120 test documents, 34,567 tokens"
    assert CLAIMS["joint_kl_reduction"].rests_on(reader) == "60 test documents, 90 windows, 11,520 spliced tokens"
    intervals = CLAIMS["joint_improvement"].extract(reader)
    assert (intervals.low, intervals.high, intervals.seeds) == pytest.approx((0.01, 0.03, 2))
    assert "standard 0/2" in CLAIMS["squared_norm_mode_low"].extract(reader).note


def test_the_paper_claims_table_and_the_registry_name_the_same_claims(tmp_path: Path) -> None:
    from featint.claims import CLAIMS, claims_table, read_paper_claims

    paper = read_paper_claims(Path(__file__).resolve().parents[1] / "config" / "paper_claims.tsv")
    assert set(paper["claim_id"]) == set(CLAIMS)
    table = claims_table(paper, Artefacts(**_made_up()))
    assert table["claim_id"].tolist() == paper["claim_id"].tolist()
    row = table.set_index("claim_id").loc["joint_improvement"]
    assert row["ours_corrected"] == pytest.approx(0.02) and row["rests_on"].startswith("120 test documents")
    bad = tmp_path / "claims.tsv"
    paper.assign(claim_id=["joint_improvment"] + paper["claim_id"].tolist()[1:]).to_csv(bad, sep="\t", index=False)
    with pytest.raises(ClaimsError, match="no extractor for claim.*joint_improvment"):
        read_paper_claims(bad)


def test_the_claims_stage_writes_its_outputs_from_the_files_it_is_handed(tmp_path: Path) -> None:
    from featint.claims import ClaimsOutputs, run_claims
    from featint.layout import ReportFolder

    paths = {}
    for name, frame in _made_up().items():
        paths[name] = tmp_path / "in" / f"{name}.parquet"
        paths[name].parent.mkdir(exist_ok=True)
        frame.to_parquet(paths[name])
    out = ClaimsOutputs.in_folder(ReportFolder(tmp_path / "report"))
    paper = Path(__file__).resolve().parents[1] / "config" / "paper_claims.tsv"
    table = run_claims(paper, paths, out, run="made_up")
    assert pd.read_parquet(out.table)["claim_id"].tolist() == table["claim_id"].tolist()
    assert Path(out.markdown).read_text().startswith("# Paper claims vs this run (`made_up`)")
    kinds = pd.read_parquet(out.kinds)
    assert set(kinds["model"]) == {"joint"} and Path(out.kinds_figure).is_file()
