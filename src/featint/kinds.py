"""The one table of model kinds: what each kind trains, what it starts from, which terms it has.

Every consumer derives from :data:`KINDS`: building and training (:mod:`featint.models`,
:mod:`featint.training`), config validation (:mod:`featint.config`), the LR families, plot order, the SAELens
export, the rules' wildcards and which stages take a kind. Adding a kind is one :class:`ModelKind` entry here
(plus its head's code in :mod:`featint.models` if it brings a new head).

The heads (the part beside the SAE, all fitted with one loss ``MSE(x, sae + linear + interaction)``):

* ``nfm``: the paper's Neural Factorization Machine on the sparse codes (linear term + bi-interaction MLP).
* ``poly``: the NFM's linear term + a low-rank quadratic on the codes (pairwise products only, like the
  factorisation machine; PolySAE, Koromilas et al. 2026), rank chosen for the NFM interaction pathway's
  parameter count.
* ``mlp``: the NFM's linear term + a one-hidden-layer MLP on the codes (first layer gathered over the k active
  rows), hidden width chosen for the NFM interaction pathway's parameter count.
* ``linear_input``: the NFM's linear term + a linear map (low-rank when that matches the NFM interaction
  pathway's parameter count) from the input activation x: the part of the SAE's error that is linearly
  predictable from x (Engels et al., 2025). Everything it adds is linear, so it reports a ``linear`` term only.

This module imports nothing heavy (config validation reads it before torch is needed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

Head = Literal["nfm", "poly", "mlp", "linear_input"]

#: the reconstruction component of the SAE alone (every kind has it)
SAE_COMPONENT = "sae"
#: the reconstruction component of SAE plus head (the kinds with a head)
FULL_COMPONENT = "full"


@dataclass(frozen=True)
class ModelKind:
    """One model kind; the table's order is the plot order."""

    name: str
    #: one line for tables, the README and the config docs
    description: str
    #: "scratch": trained from a fresh init; "standard": starts from the trained standard SAE of the same seed
    start: Literal["scratch", "standard"] = "scratch"
    #: "all": every parameter; "head": the head only (SAE frozen); "decoder": W_dec and b_dec only (encoder frozen)
    trains: Literal["all", "head", "decoder"] = "all"
    #: the module beside the SAE, or None for an SAE alone
    head: Head | None = None
    #: the head has the linear term on the codes (W_lin f + b_lin)
    linear: bool = True
    #: the head has its second (interaction) term
    interaction: bool = True
    #: SAE width: "sae" (sae.n_features) or "param_matched" (the joint model's parameter count)
    width: Literal["sae", "param_matched"] = "sae"
    #: the frozen SAE runs at "sae" (sae.k) or "truncated" (nfm.truncated_k)
    infer_k: Literal["sae", "truncated"] = "sae"
    #: the kind whose validation LR selection this kind reuses (same parameters on the same inputs); None: itself
    lr_source: str | None = None
    #: a control the paper lacked, or a rival integration model (README tables group by it)
    role: Literal["paper", "control", "ablation", "rival"] = "paper"

    @property
    def from_standard(self) -> bool:
        return self.start == "standard"

    @property
    def sae_only(self) -> bool:
        """An SAE alone reconstructs: exportable to SAELens, no components to split."""
        return self.head is None

    @property
    def has_embedding(self) -> bool:
        """The NFM interaction embedding exists (the secondary SAE and clamping need it)."""
        return self.head == "nfm" and self.interaction

    @property
    def nfm_geometry(self) -> bool:
        """Geometry's NFM measures (row norms of W_lin and V, contributions) apply: SAE alone or an NFM head."""
        return self.head in (None, "nfm")

    @property
    def final_component(self) -> str:
        """The component that is this kind's whole reconstruction: the SAE's alone, or SAE plus head."""
        return SAE_COMPONENT if self.sae_only else FULL_COMPONENT


def _table(*kinds: ModelKind) -> dict[str, ModelKind]:
    return {kind.name: kind for kind in kinds}


KINDS: dict[str, ModelKind] = _table(
    ModelKind("standard", "TopK SAE alone"),
    ModelKind("standard_refit", "the standard SAE's encoder frozen, its decoder trained for the NFM's extra budget",
              start="standard", trains="decoder", role="control"),
    ModelKind("param_matched", "TopK SAE as wide as the joint model's parameter count", width="param_matched",
              role="control"),
    ModelKind("sequential", "the standard SAE frozen, an NFM fitted to its residual", start="standard",
              trains="head", head="nfm"),
    ModelKind("sequential_truncated", "as sequential, the frozen SAE run at nfm.truncated_k", start="standard",
              trains="head", head="nfm", infer_k="truncated", lr_source="sequential", role="ablation"),
    ModelKind("sequential_linear_input", "the standard SAE frozen, its linear code term plus a linear map of x",
              start="standard", trains="head", head="linear_input", interaction=False, role="rival"),
    ModelKind("sequential_poly", "the standard SAE frozen, linear term plus a low-rank quadratic on the codes",
              start="standard", trains="head", head="poly", role="rival"),
    ModelKind("sequential_mlp", "the standard SAE frozen, linear term plus a one-hidden-layer MLP on the codes",
              start="standard", trains="head", head="mlp", role="rival"),
    ModelKind("joint", "SAE and NFM trained together from scratch", head="nfm"),
    ModelKind("joint_no_interaction", "the joint model without the NFM interaction term", head="nfm",
              interaction=False, role="ablation"),
    ModelKind("joint_no_linear", "the joint model without the NFM linear term", head="nfm", linear=False,
              role="ablation"),
    ModelKind("joint_poly", "SAE and the low-rank quadratic head trained together from scratch", head="poly",
              role="rival"),
)

#: every kind, in plot order
MODEL_KINDS: tuple[str, ...] = tuple(KINDS)
#: a TopK SAE trained on another model's NFM interaction embedding (the intervention stage); not in the table
SECONDARY_KIND = "secondary"
#: kinds initialised from the trained ``standard`` SAE of the same seed
FROM_STANDARD: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.from_standard)
#: kinds with an NFM interaction embedding (the intervention stage's input)
WITH_EMBEDDING: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.has_embedding)
#: kinds whose SAE alone is the whole model (the ones the workflow exports to SAELens)
SAE_ONLY: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.sae_only)

#: the kind every other kind is compared with as a whole model: the independently trained SAE alone, same seed
BASELINE = "standard"
#: the ``term`` of a comparison against :data:`BASELINE`: the whole model, not one term, differs
WHOLE_MODEL = "whole model"


class Comparison(NamedTuple):
    """One comparison of the run: ``model``'s final reconstruction against ``reference``'s, on the same tokens,
    seed and budget (the improvement is :func:`featint.stats.improvement` of their losses)."""

    model: str  #: the kind compared
    reference: str  #: the kind it is compared with
    #: what the two differ in: :data:`WHOLE_MODEL` against :data:`BASELINE`, else the one term the model adds
    term: str

    @property
    def against_baseline(self) -> bool:
        """The whole model against the SAE alone (not a term against its control)."""
        return self.term == WHOLE_MODEL


#: every comparison the workflow reports, in report order: each kind against :data:`BASELINE`, then each term
#: beside the SAE against the control that differs from it only in that term. The rivals' references are at
#: equal parameters (each head's second pathway has the NFM interaction pathway's count); ``param_matched``
#: spends the joint model's parameters on SAE width instead.
COMPARISONS: tuple[Comparison, ...] = tuple(Comparison(name, BASELINE, WHOLE_MODEL) for name in KINDS
                                            if name != BASELINE) + (
    Comparison("joint", "joint_no_interaction", "NFM interaction pathway (trained jointly)"),
    Comparison("joint", "param_matched", "NFM head against the same parameters spent on SAE width"),
    Comparison("joint_poly", "joint_no_interaction", "low-rank quadratic on the codes (trained jointly)"),
    Comparison("sequential", "sequential_linear_input", "NFM interaction pathway against a linear map of x"),
    Comparison("sequential_poly", "sequential_linear_input", "low-rank quadratic against a linear map of x"),
    Comparison("sequential_mlp", "sequential_linear_input", "one-hidden-layer MLP against a linear map of x"),
)


def comparisons(models: Iterable[str], *, baseline: bool = True, terms: bool = True) -> tuple[Comparison, ...]:
    """The rows of :data:`COMPARISONS` whose two kinds are both in ``models`` (in :data:`COMPARISONS`' order):
    those against :data:`BASELINE` when ``baseline``, the term controls when ``terms``. The one list every
    comparison (reconstruction, its bootstrap, the layer sweep, the budget, the planted control) is read from."""
    present = set(models)
    return tuple(c for c in COMPARISONS if c.model in present and c.reference in present
                 and (baseline if c.against_baseline else terms))


#: kinds with a nonlinear term on the codes (the NFM's interaction pathway or a rival's)
WITH_INTERACTION: tuple[str, ...] = tuple(name for name, kind in KINDS.items()
                                          if kind.head is not None and kind.interaction)


def kind(name: str) -> ModelKind:
    """The table entry of ``name`` (a clear error for an unknown kind)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown model kind {name!r}; expected one of {list(MODEL_KINDS)}") from None


def final_component(name: str) -> str:
    """The component of kind ``name``'s tables that is its whole reconstruction (the one definition: the
    comparisons, the budget fits and the claims all read it)."""
    return kind(name).final_component


def lr_selection_kind(name: str) -> str:
    """The kind whose validation-split LR selection ``name`` uses (itself unless the table names a source)."""
    return kind(name).lr_source or name


def order(names: object) -> list[str]:
    """``names`` (any iterable of kind names) in the table's order, unknown names last, sorted."""
    present = set(names)  # type: ignore[call-overload]
    return [n for n in MODEL_KINDS if n in present] + sorted(present - set(MODEL_KINDS))
