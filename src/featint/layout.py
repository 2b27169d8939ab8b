"""Where every artefact of a run lives: the one module that names a run's files and folders.

A run writes under ``results/<run>/``. Each kind of folder is one small class here whose fields are the files
inside it (``ModelFolder(root).weights``, ``GeometryFolder(root).summary``, ...), and :class:`RunLayout` places
every folder under the run's results. The Snakefiles build every ``input`` and ``output`` from a
:class:`RunLayout`; the stages and the CLI name the files of the folders they are handed with the same classes;
nothing else in the package spells a file name (a test greps for one). The paths are plain strings, so a
folder may hold Snakemake wildcards (``RunLayout("results/x").model("{kind}", "{seed}").weights``).

Renaming a file is one line here: the rule that writes it, the rules that read it and the stages agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------------------
# folders: the files inside one folder


@dataclass(frozen=True)
class Folder:
    """A folder of artefacts; ``root`` may contain Snakemake wildcards."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", str(self.root))

    def file(self, name: str) -> str:
        return f"{self.root}/{name}"

    def figure(self, name: str) -> str:
        """A figure of this folder: ``figures/<name>.png``."""
        return f"{self.root}/figures/{name}.png"

    def __str__(self) -> str:
        return self.root


@dataclass(frozen=True)
class StoreFolder(Folder):
    """One split's activation store (:class:`featint.activations.ActivationStore`): sharded vectors, one row of
    the token table per stored token, and the manifest that lists the shards."""

    @property
    def manifest(self) -> str:
        return self.file(STORE_MANIFEST)

    @property
    def tokens(self) -> str:
        return self.file(STORE_TOKENS)

    def shard(self, index: int) -> str:
        return self.file(shard_name(index))


#: an activation store's manifest (written last: a store without it is incomplete) and token table
STORE_MANIFEST, STORE_TOKENS = "manifest.parquet", "tokens.parquet"


def shard_name(index: int) -> str:
    """The file name of activation shard ``index`` (the manifest lists these names)."""
    return f"shard-{index:05d}.safetensors"


@dataclass(frozen=True)
class ActivationsFolder(Folder):
    """A run's (or a layer's, or a planted setting's) activations: one store per split, the normaliser fitted on
    the train split, and the extraction summary."""

    def split(self, name: str) -> str:
        return self.file(name)

    def store(self, name: str) -> StoreFolder:
        return StoreFolder(self.split(name))

    @property
    def normaliser(self) -> str:
        return self.file("normaliser.safetensors")

    @property
    def summary(self) -> str:
        return self.file("summary.parquet")

    @property
    def norm_by_position(self) -> str:
        return self.file("norm_by_position.parquet")

    @property
    def norm_by_position_figure(self) -> str:
        return self.figure("norm_by_position")


@dataclass(frozen=True)
class CodeCacheFolder(Folder):
    """The frozen standard SAE's codes of every selected train token (:mod:`featint.codes`)."""

    @property
    def manifest(self) -> str:
        return self.file(CODES_MANIFEST)

    @staticmethod
    def shard_name(index: int) -> str:
        return f"codes-{index:05d}.safetensors"


#: the file that lists a code cache's shards (written last: a cache without it is incomplete)
CODES_MANIFEST = "manifest.parquet"


#: SAELens's file names of an SAE folder: its config and its weights
SAELENS_CONFIG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
#: EleutherAI sparsify's file names of one hookpoint's folder (``SparseCoder.save_to_disk``)
SPARSIFY_CONFIG, SPARSIFY_WEIGHTS = "cfg.json", "sae.safetensors"


@dataclass(frozen=True)
class SAELensFolder(Folder):
    """An SAE in SAELens's on-disk format (the export writes one; ``sae.source: saelens`` reads one)."""

    @property
    def config(self) -> str:
        return self.file(SAELENS_CONFIG)

    @property
    def weights(self) -> str:
        return self.file(SAELENS_WEIGHTS)


@dataclass(frozen=True)
class ModelFolder(Folder):
    """One trained model (a kind, a seed, a results group): what training leaves and its evaluation."""

    @property
    def weights(self) -> str:
        return self.file("weights.safetensors")

    @property
    def init(self) -> str:
        return self.file("init.safetensors")

    @property
    def train_log(self) -> str:
        return self.file("train_log.parquet")

    @property
    def parameters(self) -> str:
        return self.file("parameters.parquet")

    @property
    def checkpoint(self) -> str:
        return self.file("checkpoint.pt")

    @property
    def loss_figure(self) -> str:
        return self.figure("loss")

    @property
    def normaliser(self) -> str:
        """The input normaliser a secondary SAE (trained on an embedding, not on the run's activations) keeps."""
        return self.file("normaliser.safetensors")

    @property
    def reconstruction(self) -> str:
        return self.file("reconstruction.parquet")

    @property
    def reconstruction_documents(self) -> str:
        return self.file("reconstruction_documents.parquet")

    @property
    def saelens(self) -> SAELensFolder:
        return SAELensFolder(self.file("saelens"))

    @property
    def saebench_core(self) -> str:
        """SAEBench's core eval output (JSON) of this SAE-only model."""
        return self.file("saebench_core.json")

    @property
    def codes(self) -> CodeCacheFolder:
        """The cached codes of this (standard) SAE, where kinds trained beside it read them."""
        return CodeCacheFolder(self.file("codes"))


@dataclass(frozen=True)
class KindsFolder(Folder):
    """A folder holding one model folder per kind (the kinds trained together, ``standard`` first)."""

    def model(self, kind: str) -> ModelFolder:
        return ModelFolder(self.file(kind))


@dataclass(frozen=True)
class LRSelectionFolder(Folder):
    """The validation-split LR choices: one table per kind, their summary and figure."""

    def kind(self, kind: str) -> str:
        return self.file(f"{kind}.parquet")

    @property
    def summary(self) -> str:
        return self.file("summary.parquet")

    @property
    def figure_path(self) -> str:
        return self.figure("lr_selection")


@dataclass(frozen=True)
class MetricsFolder(Folder):
    """The gathered reconstruction metrics of every model and seed."""

    @property
    def reconstruction(self) -> str:
        return self.file("reconstruction.parquet")

    @property
    def summary(self) -> str:
        return self.file("reconstruction_summary.parquet")

    @property
    def parameters(self) -> str:
        return self.file("parameters.parquet")

    @property
    def comparisons(self) -> str:
        return self.file("comparisons.parquet")

    @property
    def figure_path(self) -> str:
        return self.figure("reconstruction")


@dataclass(frozen=True)
class SummaryFolder(Folder):
    """A gathered stage's folder: its ``summary.parquet``, other tables by name, figures by name."""

    @property
    def summary(self) -> str:
        return self.file("summary.parquet")

    def table(self, name: str) -> str:
        return self.file(f"{name}.parquet")


@dataclass(frozen=True)
class GeometryFolder(SummaryFolder):
    """Geometry of one model (features, summary, PCA curves) or gathered (summary, verdicts, figures)."""

    @property
    def features(self) -> str:
        return self.file("features.parquet")

    @property
    def pca(self) -> str:
        return self.file("pca.parquet")

    @property
    def verdicts(self) -> str:
        return self.file("verdicts.parquet")


class GeometryFigures(NamedTuple):
    """The gathered geometry figures (the rule's figure outputs, in this order)."""

    squared_norm_histograms: str
    squared_norm_vs_firing_frequency: str
    squared_norm_vs_paper_interaction_ratio: str
    squared_norm_vs_activation_nfm_share: str
    squared_norm_by_cluster: str
    pca_elbows: str


class BehaviourFigures(NamedTuple):
    """The gathered behaviour figures."""

    kl_distributions: str
    pathology_ratios: str
    kl_vs_error_norm: str


class InterventionFigures(NamedTuple):
    """The gathered intervention figures."""

    clamp_interaction_lines: str
    clamp_heatmaps: str
    secondary_activation_by_cell: str


class IntegrationFigures(NamedTuple):
    """The pair product test's figures on the LM."""

    pair_z: str
    top_pairs: str


#: the names of each figure set (the rules' targets)
GEOMETRY_FIGURES = GeometryFigures._fields
BEHAVIOUR_FIGURES = BehaviourFigures._fields
INTERVENTION_FIGURES = InterventionFigures._fields
INTEGRATION_FIGURES = IntegrationFigures._fields


@dataclass(frozen=True)
class BehaviourFolder(Folder):
    """The spliced-LM behaviour of one model (or the clean reference): its per-token table."""

    @property
    def tokens(self) -> str:
        return self.file("tokens.parquet")


@dataclass(frozen=True)
class InterventionFolder(Folder):
    """One model's interventions: the secondary SAE (a model folder) and one table per intervention table."""

    @property
    def secondary(self) -> ModelFolder:
        return ModelFolder(self.file("secondary"))

    def table(self, name: str) -> str:
        return self.file(f"{name}.parquet")


@dataclass(frozen=True)
class InterventionsFolder(SummaryFolder):
    """The gathered interventions: the summary, one table per intervention table, the clamp statistics."""

    @property
    def clamp_statistics(self) -> str:
        return self.file("clamp_statistics.parquet")


@dataclass(frozen=True)
class IntegrationFolder(SummaryFolder):
    """The pair product test of one model (pairs, contexts) or gathered (summary, pairs, replication,
    contexts, figures)."""

    @property
    def pairs(self) -> str:
        return self.file("pairs.parquet")

    @property
    def contexts(self) -> str:
        return self.file("contexts.parquet")

    @property
    def replication(self) -> str:
        return self.file("replication.parquet")

    @property
    def calibration(self) -> str:
        return self.file("calibration.parquet")


@dataclass(frozen=True)
class SyntheticSettingFolder(Folder):
    """One planted setting's generated data: activations, the planted truth, its test pairs and variance."""

    @property
    def activations(self) -> ActivationsFolder:
        return ActivationsFolder(self.file("activations"))

    @property
    def truth(self) -> str:
        return self.file("truth.safetensors")

    @property
    def test_pairs(self) -> str:
        return self.file("test_pairs.parquet")

    @property
    def variance(self) -> str:
        return self.file("variance.parquet")


@dataclass(frozen=True)
class SyntheticModelsFolder(KindsFolder):
    """The models of one planted setting and seed (one folder per kind) and their FVU and pair tables."""

    @property
    def fvu(self) -> str:
        return self.file("fvu.parquet")

    @property
    def pairs(self) -> str:
        return self.file("pairs.parquet")


@dataclass(frozen=True)
class SyntheticSummaryFolder(SummaryFolder):
    """The planted control's gathered tables and figures."""

    @property
    def fvu(self) -> str:
        return self.file("fvu.parquet")

    @property
    def power(self) -> str:
        return self.file("power.parquet")

    @property
    def detection(self) -> str:
        return self.file("detection.parquet")

    @property
    def identification(self) -> str:
        return self.file("identification.parquet")

    @property
    def variance(self) -> str:
        return self.file("variance.parquet")

    @property
    def integration_power(self) -> str:
        return self.file("integration_power.parquet")

    @property
    def integration_calibration(self) -> str:
        return self.file("integration_calibration.parquet")


@dataclass(frozen=True)
class AblationFolder(KindsFolder):
    """One ablation instance: its models (one folder per kind) and its reconstruction table."""

    @property
    def reconstruction(self) -> str:
        return self.file("reconstruction.parquet")


@dataclass(frozen=True)
class LayerFolder(KindsFolder):
    """One layer and seed of the layer sweep: the models (one folder per kind) and their tables."""

    @property
    def reconstruction(self) -> str:
        return self.file("reconstruction.parquet")

    @property
    def documents(self) -> str:
        return self.file("documents.parquet")

    @property
    def parameters(self) -> str:
        return self.file("parameters.parquet")


@dataclass(frozen=True)
class LayersFolder(Folder):
    """The layer sweep: per-layer activations and models, the gathered comparisons, FVU and figure."""

    def activations(self, layer: int | str) -> ActivationsFolder:
        return ActivationsFolder(self.file(f"layer~{layer}/activations"))

    def layer(self, layer: int | str, seed: int | str) -> LayerFolder:
        return LayerFolder(self.file(f"layer~{layer}/seed~{seed}"))

    @property
    def comparisons(self) -> str:
        return self.file("comparisons.parquet")

    @property
    def fvu(self) -> str:
        return self.file("fvu.parquet")


@dataclass(frozen=True)
class ReportFolder(Folder):
    """The claims table beside the paper's, every kind against its parameter count, the run's config and
    versions."""

    @property
    def claims(self) -> str:
        return self.file("claims.parquet")

    @property
    def claims_markdown(self) -> str:
        return self.file("claims.md")

    @property
    def kinds(self) -> str:
        return self.file("kinds_by_parameters.parquet")

    @property
    def kinds_figure(self) -> str:
        return self.figure("kinds_by_parameters")

    @property
    def config(self) -> str:
        return self.file("config.yaml")

    @property
    def versions(self) -> str:
        return self.file("versions.tsv")


@dataclass(frozen=True)
class LMFolder(Folder):
    """A local Hugging Face model folder (the embedded model is prepared into one)."""

    @property
    def config(self) -> str:
        return self.file(LM_CONFIG)

    @property
    def marker(self) -> str:
        """Written by featint when it prepared the folder (what it was prepared from)."""
        return self.file(LM_MARKER)


#: a Hugging Face model folder's config, and the file featint writes into a folder it prepared
LM_CONFIG, LM_MARKER = "config.json", "featint_lm.json"


# ---------------------------------------------------------------------------------------------------------
# the run: every folder under results/<run>


@dataclass(frozen=True)
class RunLayout(Folder):
    """Every artefact folder of one run, under ``root`` = ``results/<run>``."""

    @property
    def corpus_documents(self) -> str:
        return self.file("corpus/documents.parquet")

    @property
    def activations(self) -> ActivationsFolder:
        return ActivationsFolder(self.file("activations"))

    def model(self, kind: str, seed: int | str, group: str = "models") -> ModelFolder:
        """A trained model; ``group`` is ``models`` (the run's), ``convergence`` or ``budget_x<factor>``."""
        return ModelFolder(self.file(f"{group}/{kind}/seed~{seed}"))

    def codes(self, seed: int | str) -> CodeCacheFolder:
        return CodeCacheFolder(self.file(f"codes/standard/seed~{seed}"))

    def lr_selection(self, group: str | None = None) -> LRSelectionFolder:
        """The run's LR choices, or a budget group's (chosen again at that budget)."""
        return LRSelectionFolder(self.file("lr_selection" if group is None else f"{group}/lr_selection"))

    @property
    def metrics(self) -> MetricsFolder:
        return MetricsFolder(self.file("metrics"))

    @property
    def convergence(self) -> SummaryFolder:
        return SummaryFolder(self.file("convergence"))

    @property
    def behaviour(self) -> SummaryFolder:
        return SummaryFolder(self.file("behaviour"))

    def behaviour_of(self, kind: str, seed: int | str) -> BehaviourFolder:
        return BehaviourFolder(self.file(f"behaviour/{kind}/seed~{seed}"))

    @property
    def behaviour_reference(self) -> BehaviourFolder:
        return BehaviourFolder(self.file("behaviour/reference"))

    @property
    def geometry(self) -> GeometryFolder:
        return GeometryFolder(self.file("geometry"))

    def geometry_of(self, kind: str, seed: int | str) -> GeometryFolder:
        return GeometryFolder(self.file(f"geometry/{kind}/seed~{seed}"))

    @property
    def interventions(self) -> InterventionsFolder:
        return InterventionsFolder(self.file("interventions"))

    def interventions_of(self, kind: str, seed: int | str) -> InterventionFolder:
        return InterventionFolder(self.file(f"interventions/{kind}/seed~{seed}"))

    @property
    def integration(self) -> IntegrationFolder:
        return IntegrationFolder(self.file("integration"))

    def integration_of(self, kind: str, seed: int | str) -> IntegrationFolder:
        return IntegrationFolder(self.file(f"integration/{kind}/seed~{seed}"))

    @property
    def ablations(self) -> SummaryFolder:
        return SummaryFolder(self.file("ablations"))

    def ablation(self, instance: str) -> AblationFolder:
        return AblationFolder(self.file(f"ablations/{instance}"))

    @property
    def layers(self) -> LayersFolder:
        return LayersFolder(self.file("layers"))

    def synthetic_setting(self, variant: str, strength: str) -> SyntheticSettingFolder:
        return SyntheticSettingFolder(self.file(f"synthetic/data/{variant}~c{strength}"))

    def synthetic_models(self, variant: str, strength: str, seed: int | str) -> SyntheticModelsFolder:
        return SyntheticModelsFolder(self.file(f"synthetic/models/{variant}~c{strength}/seed~{seed}"))

    def synthetic_integration(self, variant: str, strength: str, seed: int | str) -> IntegrationFolder:
        return IntegrationFolder(self.file(f"synthetic/integration/{variant}~c{strength}/seed~{seed}"))

    @property
    def synthetic_summary(self) -> SyntheticSummaryFolder:
        return SyntheticSummaryFolder(self.file("synthetic/summary"))

    @property
    def budget(self) -> SummaryFolder:
        return SummaryFolder(self.file("budget"))

    @property
    def report(self) -> ReportFolder:
        return ReportFolder(self.file("report"))

    @property
    def budget_report(self) -> ReportFolder:
        return ReportFolder(self.file("budget/report"))
