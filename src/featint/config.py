"""Configuration: loading, JSON-schema validation with defaults, typed settings.

The schema (``featint/schema.yaml``, also reachable as ``config/schema.yaml``) is the single description of
every key. Snakemake validates the workflow config against it at DAG start; the CLI validates again with
:func:`load_settings`, so each stage run without Snakemake gets the same checks and defaults.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from featint import kinds
from featint.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def schema_path() -> Path:
    """Path of the JSON schema shipped with the package."""
    return Path(str(resources.files("featint").joinpath("schema.yaml")))


#: ``x-kinds`` in the schema: which kinds of the one table (:mod:`featint.kinds`) a kind list accepts.
_KIND_LISTS = {"all": kinds.MODEL_KINDS, "with_embedding": kinds.WITH_EMBEDDING}


def _fill_kind_enums(node: Any) -> None:
    """Give every schema node marked ``x-kinds`` the ``enum`` of the kinds table, so that the table stays the
    one list of kinds (Snakemake's own validator reads the file and sees plain strings; featint validates
    first)."""
    if isinstance(node, dict):
        if "x-kinds" in node:
            node["enum"] = list(_KIND_LISTS[node["x-kinds"]])
        for value in node.values():
            _fill_kind_enums(value)
    elif isinstance(node, list):
        for value in node:
            _fill_kind_enums(value)


@functools.cache
def load_schema() -> dict[str, Any]:
    """The schema, its kind lists filled from the kinds table: read once per process and shared (the settings
    classes' docstrings and every validation read it; callers must not modify it)."""
    with open(schema_path(), encoding="utf-8") as handle:
        schema = yaml.safe_load(handle)
    _fill_kind_enums(schema)
    return schema


def _with_defaults(validator_class: type) -> type:
    """A validator that fills ``default`` values of missing properties before validating them."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_config(config: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` against the schema, fill defaults, and return the completed copy.

    Raises :class:`ConfigError` naming the offending key (and the file) for unknown keys and wrong types.
    """
    completed = copy.deepcopy(dict(config))
    validator = _DefaultFillingValidator(load_schema())
    errors = sorted(validator.iter_errors(completed), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for error in errors:
            where = _key_path(error)
            if error.validator == "additionalProperties":
                allowed = sorted(error.schema.get("properties", {}))
                unknown = sorted(set(error.instance) - set(allowed))
                parent = where if where != "<top level>" else ""
                for key in unknown:
                    full = f"{parent}.{key}" if parent else key
                    lines.append(
                        f"unknown config key '{full}'; allowed keys here: {', '.join(allowed)}"
                    )
            else:
                lines.append(f"config key '{where}': {error.message}")
        raise ConfigError(
            f"{source} is not a valid featint configuration:\n  - "
            + "\n  - ".join(lines)
            + f"\nFix the key(s) above; every key is documented in {schema_path()}."
        )
    fractions = completed["split"]["fractions"]
    total = sum(fractions[s] for s in SPLITS)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{source}: split.fractions must sum to 1 (they sum to {total:g}); adjust train/validation/test."
        )
    model = completed["model"]
    if model["source"] == "local" and not model["path"]:
        raise ConfigError(f"{source}: model.source is 'local' but model.path is not set; set model.path.")
    if model["source"] == "hub" and not model["name"]:
        raise ConfigError(f"{source}: model.source is 'hub' but model.name is not set; set model.name.")
    corpus = completed["corpus"]
    if corpus["source"] == "text_files" and not corpus["path"]:
        raise ConfigError(f"{source}: corpus.source is 'text_files' needs corpus.path (a glob).")
    if corpus["source"] == "hf_dataset" and not corpus["hf"]["path"]:
        raise ConfigError(f"{source}: corpus.source is 'hf_dataset' needs corpus.hf.path.")
    sae = completed["sae"]
    if sae["k"] > sae["n_features"]:
        raise ConfigError(f"{source}: sae.k={sae['k']} exceeds sae.n_features={sae['n_features']}.")
    if completed["nfm"]["truncated_k"] > sae["k"]:
        raise ConfigError(f"{source}: nfm.truncated_k must not exceed sae.k={sae['k']}.")
    auxk, budget = sae["auxk"], completed["training"]["tokens"]
    # (only when both sections were given: a stage reading one of them gets the other's defaults)
    if "sae" in config and "training" in config and auxk["enabled"] and auxk["dead_after_tokens"] >= budget:
        log.warning("%s: sae.auxk.dead_after_tokens (%s) is not below training.tokens (%s), so no latent can count "
                    "as dead and AuxK will never act; lower dead_after_tokens (e.g. a tenth of the budget) or set "
                    "sae.auxk.enabled: false.", source, f"{auxk['dead_after_tokens']:,}", f"{budget:,}")
    repeated = sorted(set(completed["models"]) & set(completed["single_seed_models"]))
    if repeated:
        raise ConfigError(f"{source}: single_seed_models repeats {repeated} of models; list each kind once.")
    needs_standard = set(kinds.FROM_STANDARD) & (set(completed["models"]) | set(completed["single_seed_models"]))
    missing = sorted(set(completed["convergence"]["models"]) - set(completed["models"]))
    if missing:
        raise ConfigError(f"{source}: convergence.models {missing} are not in models; the check compares with them.")
    # (a stage given only its own sections gets the other's defaults; the workflow's config always has both)
    stray = [kind for kind in completed["interventions"]["models"] if kind not in completed["models"]]
    if "models" in config and "interventions" in config and stray:
        raise ConfigError(f"{source}: interventions.models {stray} are not in models; the experiment runs on "
                          "trained models: add them to models or list only models' kinds in interventions.models.")
    if sae["source"] != "featint":
        if not sae["path"]:
            raise ConfigError(f"{source}: sae.source is {sae['source']!r} but sae.path is not set; point it to the SAE "
                              "folder (SAELens: cfg.json + sae_weights.safetensors; sparsify: one hookpoint's folder, "
                              "cfg.json + sae.safetensors).")
        # (a stage given only its own sections gets the convergence default; the workflow checks its full config)
        if "convergence" in config and "standard" in completed["convergence"]["models"]:
            raise ConfigError(f"{source}: sae.source is {sae['source']!r}: the imported standard SAE is not "
                              "retrained, so convergence.models must not list 'standard'.")
    if "budget" in config:
        _check_budget(config, completed, source)
    layer_kinds = set(completed["layers"]["kinds"])
    if set(kinds.FROM_STANDARD) & layer_kinds and "standard" not in layer_kinds:
        raise ConfigError(f"{source}: layers.kinds {sorted(set(kinds.FROM_STANDARD) & layer_kinds)} start from the "
                          "standard SAE; add 'standard'.")
    if needs_standard and "standard" not in completed["models"]:
        raise ConfigError(f"{source}: models {sorted(needs_standard)} start from the standard SAE; add 'standard'.")
    return completed


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file.")
    with open(path, encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping at top level.")
    return loaded


# ---------------------------------------------------------------------------------------------------------
# Typed settings

#: every settings dataclass and the schema path of the section it holds ("" the whole config; "[]" an array's
#: items): filled by :func:`section`; a test checks each class's fields against the schema's properties
SECTIONS: dict[type, str] = {}


def schema_node(path: str, schema: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """The schema node of section ``path`` (dots between keys, ``[]`` for an array's items)."""
    node: Mapping[str, Any] = schema if schema is not None else load_schema()
    for part in filter(None, path.split(".")):
        name, items = (part[:-2], True) if part.endswith("[]") else (part, False)
        node = node["properties"][name]
        if items:
            node = node["items"]
    return node


def section(path: str) -> Callable[[type], type]:
    """Class decorator of a settings dataclass holding config section ``path``: its docstring lists every
    field with the schema's description, so the fields document themselves (``help(TrainingSettings)``) while
    the schema stays their one definition."""

    def document(cls: type) -> type:
        SECTIONS[cls] = path
        properties = schema_node(path).get("properties", {})
        lines = [cls.__doc__.strip(), ""] if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}(") else []
        lines += [f"Config section ``{path or '(top level)'}``; fields, as the schema describes them:", ""]
        lines += [f"* ``{name}``: {spec.get('description', '')}" for name, spec in properties.items()]
        cls.__doc__ = "\n".join(lines)
        return cls

    return document



@section("model")
@dataclass(frozen=True)
class ModelSettings:
    source: str
    name: str | None
    path: str | None
    revision: str | None
    dtype: str
    device: str
    shape: dict[str, float] | None = None  #: published shape (d_model, n_layers, vocab_size, n_parameters) for plans


@section("hook")
@dataclass(frozen=True)
class HookSettings:
    layer: int
    site: str


@section("corpus.hf")
@dataclass(frozen=True)
class HFCorpusSettings:
    path: str | None
    name: str | None
    data_files: dict[str, Any] | None
    text_column: str
    wikitext_articles: bool
    splits: dict[str, str]


@section("corpus")
@dataclass(frozen=True)
class CorpusSettings:
    source: str
    path: str | None
    hf: HFCorpusSettings
    max_documents: int | None
    min_chars: int


@section("split")
@dataclass(frozen=True)
class SplitSettings:
    salt: str
    fractions: dict[str, float]


@section("extraction")
@dataclass(frozen=True)
class ExtractionSettings:
    context_length: int
    batch_size: int
    shard_rows: int
    dtype: str
    max_tokens: dict[str, int | None]
    exclude_position_zero: bool
    outlier_norm_factor: float
    exclude_outliers: bool


@section("normaliser")
@dataclass(frozen=True)
class NormaliserSettings:
    kind: str
    min_std: float


@section("sae.auxk")
@dataclass(frozen=True)
class AuxKSettings:
    enabled: bool
    k_aux: int
    coefficient: float
    dead_after_tokens: int


@section("sae")
@dataclass(frozen=True)
class SAESettings:
    n_features: int
    k: int
    decoder_norm: str
    pre_encoder_bias: bool
    tied_init: bool
    auxk: AuxKSettings
    source: str = "featint"
    path: str | None = None
    hook_name: str | None = None


@section("nfm")
@dataclass(frozen=True)
class NFMSettings:
    embed_dim: int
    dropout: float
    embedding_std: float
    linear_std: float
    mlp_std: float
    truncated_k: int


@section("training")
@dataclass(frozen=True)
class TrainingSettings:
    seeds: list[int]
    tokens: int
    batch_size: int
    lr: float | None
    lr_grid: list[float]
    lr_selection_tokens: int
    lr_grid_factor: float
    lr_grid_extensions: int
    betas: list[float]
    eps: float
    lr_final_factor: float
    lr_decay_fraction: float
    grad_clip: float
    shuffle_shards: int
    checkpoint_every: int
    log_every: int
    validate_every: int
    validation_tokens: int
    cache_codes: bool
    bf16_autocast: bool | str  #: true, false or 'auto' (native bf16 on the job's device); see :meth:`bf16`
    kernels: str = "auto"  #: sparse or dense SAE products, or the device's default (featint.models.KERNELS_BY_DEVICE)

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    def bf16(self, device: Any) -> bool:
        """Whether a job on ``device`` runs its encoder product under bf16 autocast (``auto`` resolved by
        :func:`featint.runtime.native_bf16`)."""
        from featint.runtime import resolve_bf16

        return resolve_bf16(self.bf16_autocast, device)


@section("evaluation")
@dataclass(frozen=True)
class EvaluationSettings:
    bootstrap: int
    ci_level: float


@section("convergence")
@dataclass(frozen=True)
class ConvergenceSettings:
    models: list[str]
    budget_factor: float
    max_relative_fvu_change: float


@section("budget")
@dataclass(frozen=True)
class BudgetSettings:
    """The ``budget`` target: which kinds, at which multiples of ``training.tokens``, on which seeds."""

    models: list[str]  #: kinds trained at every factor
    factors: list[float]  #: multiples of training.tokens (1 = the default run's models)
    seeded_factors: list[float]  #: factors trained on every seed (the rest on the first seed)
    select_lr: bool  #: choose the LR again on validation at every factor above 1
    alpha_range: list[float]  #: the exponents the scaling fit searches

    def instances(self, seeds: list[int]) -> list[tuple[str, float, int]]:
        """Every (kind, factor, seed) the target evaluates."""
        return [(kind, float(factor), seed) for factor in sorted(self.factors) for kind in self.models
                for seed in (seeds if factor in self.seeded_factors else seeds[:1])]


def budget_group(factor: float) -> str:
    """The results folder of the models trained at ``factor`` x the budget: ``models`` (the default run's) at
    1, ``budget_x2`` and so on above (``budget_x1.5`` for a fractional factor)."""
    return "models" if float(factor) == 1.0 else f"budget_x{float(factor):g}"


def group_budget_factor(group: str, convergence_factor: float) -> float:
    """The multiple of ``training.tokens`` a results group was trained for (the inverse of :func:`budget_group`;
    ``convergence`` is the convergence check's factor)."""
    if group == "models":
        return 1.0
    if group == "convergence":
        return float(convergence_factor)
    if group.startswith("budget_x"):
        return float(group.removeprefix("budget_x"))
    raise ValueError(f"unknown results group {group!r}")


@section("geometry")
@dataclass(frozen=True)
class GeometrySettings:
    tokens: int
    interaction_tokens: int
    paper_threshold: float
    min_fires: int
    min_relative_move: float
    paper_pca_components: int
    block_rows: int


@section("integration")
@dataclass(frozen=True)
class IntegrationSettings:
    """The held-out pair product test (:mod:`featint.integration`); each field's meaning is in the schema."""

    models: list[str]  #: kinds whose SAE latents are tested
    min_tokens: int  #: a pair is tested when co-active on at least this many fit and test tokens
    min_documents: int  #: ... and its test tokens come from at least this many documents (the clusters)
    max_pairs: int  #: the most co-active pairs tested per model and seed
    fit_tokens: int  #: train tokens read for the fits (evenly spaced over the split)
    max_fit_tokens: int  #: co-active fit tokens used per pair (evenly spaced)
    surrogates: int  #: no-interaction surrogate draws the data's statistics are referred to
    fdr: float  #: Benjamini-Hochberg level of ``flagged``
    ci_level: float  #: level of the effect intervals
    match_cosine: float  #: decoder cosine for a latent to match a true feature or another seed's latent
    contexts_per_pair: int  #: strongest co-activating test tokens kept per flagged pair
    context_tokens: int  #: tokens shown either side of a context's token
    top_pairs: int  #: flagged pairs shown with their contexts in the gather's table and figure
    planted_power: str | None  #: a planted-control run's integration_power.parquet, for the claims row


@section("behaviour")
@dataclass(frozen=True)
class BehaviourSettings:
    windows: int
    positions: int | None
    epsilon_draws: int
    batch_tokens: int
    replace_position_zero: bool
    token_set: str
    bootstrap: int
    ci_level: float
    kl_chunk_tokens: int
    residual_tolerance: float


@section("interventions.secondary")
@dataclass(frozen=True)
class SecondarySAESettings:
    expansion: int
    k_fraction: float
    embedding_tokens: int
    tokens: int
    batch_size: int
    lr: float


@section("interventions")
@dataclass(frozen=True)
class InterventionSettings:
    models: list[str]
    stimuli: str
    min_sentences_per_cell: int
    min_prompts: int
    min_words_per_set: int
    max_length_difference: float
    secondary: SecondarySAESettings
    top_secondary: int
    clamp_features: int
    min_fires_fraction: float
    multipliers: list[float]
    set_quantiles: list[float]
    generation_prompts: int
    generation_tokens: int
    fdr_alpha: float


@section("ablations")
@dataclass(frozen=True)
class AblationSettings:
    table: str


@section("layers")
@dataclass(frozen=True)
class LayerSweepSettings:
    layers: list[int]  #: values of hook.layer swept
    kinds: list[str]  #: kinds trained at each layer
    seeds: list[int]  #: training seeds at each layer


@section("synthetic.variants[]")
@dataclass(frozen=True)
class SyntheticVariant:
    name: str
    width: int
    k: int
    embed: int
    direction: str


@section("synthetic")
@dataclass(frozen=True)
class SyntheticSettings:
    d_model: int
    n_features: int
    active_mean: float
    zipf_exponent: float
    magnitude_sigma: float
    n_pairs: int
    pair_fraction: float
    noise_std: float
    document_tokens: int
    data_seed: int
    tokens: dict[str, int]
    strengths: list[float]
    variants: list[SyntheticVariant]
    kinds: list[str]
    ci_level: float


class UndeclaredSectionError(RuntimeError):
    """A stage read a config section it does not declare (a bug in the stage's declaration in featint.cli)."""


class UndeclaredSection:
    """Stands in for a config section a stage did not declare: any use of it raises
    :class:`UndeclaredSectionError`, naming the stage and the section to declare."""

    def __init__(self, section: str, stage: str) -> None:
        object.__setattr__(self, "_where", (section, stage))

    def _stop(self, *_: Any, **__: Any) -> Any:
        section, stage = object.__getattribute__(self, "_where")
        raise UndeclaredSectionError(f"stage {stage!r} reads config section {section!r}, which it does not declare: "
                                     f"add {section!r} to its sections in featint.cli (its rule passes only those).")

    __getattr__ = _stop
    __bool__ = _stop
    __eq__ = _stop
    __iter__ = _stop
    __len__ = _stop
    __getitem__ = _stop
    __str__ = _stop
    __int__ = _stop
    __float__ = _stop
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        section, stage = object.__getattribute__(self, "_where")
        return f"<config section {section!r}, undeclared by stage {stage!r}>"


@section("")
@dataclass(frozen=True)
class Settings:
    run: str
    seed: int
    model: ModelSettings
    hook: HookSettings
    corpus: CorpusSettings
    split: SplitSettings
    extraction: ExtractionSettings
    normaliser: NormaliserSettings
    sae: SAESettings
    nfm: NFMSettings
    models: list[str]
    single_seed_models: list[str]
    training: TrainingSettings
    evaluation: EvaluationSettings
    convergence: ConvergenceSettings
    budget: BudgetSettings
    geometry: GeometrySettings
    integration: IntegrationSettings
    behaviour: BehaviourSettings
    interventions: InterventionSettings
    ablations: AblationSettings
    layers: LayerSweepSettings
    synthetic: SyntheticSettings | None
    raw: dict[str, Any]

    def with_overrides(self, changes: Mapping[tuple[str, ...], Any], source: str) -> Settings:
        """These settings with the keys at the given paths (e.g. ``("sae", "k")``) replaced, validated again
        (restricted settings stay restricted: an undeclared section does not come back as its default)."""
        raw = copy.deepcopy(self.raw)
        for where, value in changes.items():
            node = raw
            for key in where[:-1]:
                node = node.setdefault(key, {})
            node[where[-1]] = value
        changed = Settings.from_dict(raw, source=source)
        hidden = {f.name: getattr(self, f.name) for f in fields(self)
                  if isinstance(getattr(self, f.name), UndeclaredSection)}
        return replace(changed, **hidden) if hidden else changed

    def restricted(self, sections: tuple[str, ...], stage: str) -> Settings:
        """These settings as stage ``stage`` may read them: the declared ``sections`` as they are, every other
        section an :class:`UndeclaredSection` that stops the stage when read (its rule passes only the declared
        sections, so an undeclared one would silently hold its default), ``raw`` cut to the declared sections."""
        names = [f.name for f in fields(self) if f.name != "raw"]
        unknown = set(sections) - set(names)
        if unknown:
            raise ValueError(f"stage {stage!r} declares unknown config sections {sorted(unknown)}")
        hidden: dict[str, Any] = {name: UndeclaredSection(name, stage) for name in names if name not in sections}
        return replace(self, **hidden, raw={key: value for key, value in self.raw.items() if key in sections})

    def model_instances(self) -> list[tuple[str, int]]:
        """Every (kind, seed) trained: ``models`` on every seed, ``single_seed_models`` on the first."""
        seeds = self.training.seeds
        return [(kind, seed) for kind in self.models for seed in seeds] + [
            (kind, seeds[0]) for kind in self.single_seed_models]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], source: str = "config") -> Settings:
        c = validate_config(config, source)
        corpus = dict(c["corpus"])
        corpus["hf"] = HFCorpusSettings(**corpus["hf"])
        sae = dict(c["sae"])
        sae["auxk"] = AuxKSettings(**sae["auxk"])
        return cls(
            run=c["run"],
            seed=c["seed"],
            model=ModelSettings(**c["model"]),
            hook=HookSettings(**c["hook"]),
            corpus=CorpusSettings(**corpus),
            split=SplitSettings(**c["split"]),
            extraction=ExtractionSettings(**c["extraction"]),
            normaliser=NormaliserSettings(**c["normaliser"]),
            sae=SAESettings(**sae),
            nfm=NFMSettings(**c["nfm"]),
            models=list(c["models"]),
            single_seed_models=list(c["single_seed_models"]),
            training=TrainingSettings(**c["training"]),
            evaluation=EvaluationSettings(**c["evaluation"]),
            convergence=ConvergenceSettings(**{**c["convergence"], "models": list(c["convergence"]["models"])}),
            budget=BudgetSettings(**{key: list(value) if isinstance(value, list) else value
                                     for key, value in c["budget"].items()}),
            geometry=GeometrySettings(**c["geometry"]),
            integration=IntegrationSettings(**{**c["integration"], "models": list(c["integration"]["models"])}),
            behaviour=BehaviourSettings(**c["behaviour"]),
            interventions=InterventionSettings(**{
                **c["interventions"], "secondary": SecondarySAESettings(**c["interventions"]["secondary"])}),
            ablations=AblationSettings(**c["ablations"]),
            layers=LayerSweepSettings(**{key: list(value) for key, value in c["layers"].items()}),
            synthetic=_synthetic(c.get("synthetic"), source),
            raw=c,
        )


def _check_budget(config: Mapping[str, Any], completed: dict[str, Any], source: str) -> None:
    """The ``budget`` section against the rest (only when a config sets it: a stage given other sections gets
    its defaults)."""
    budget = completed["budget"]
    if 1 not in budget["factors"]:
        raise ConfigError(f"{source}: budget.factors {budget['factors']} must include 1 (the default run's models, "
                          "the fit's first point).")
    stray = sorted(set(budget["seeded_factors"]) - set(budget["factors"]))
    if stray:
        raise ConfigError(f"{source}: budget.seeded_factors {stray} are not in budget.factors; list them there too.")
    # (a list the config names itself; the default list is the budget target's, which an imported run may never run)
    if completed["sae"]["source"] != "featint" and "standard" in config["budget"].get("models", ()):
        raise ConfigError(f"{source}: sae.source is {completed['sae']['source']!r}: the imported standard SAE is not "
                          "retrained, so budget.models must not list 'standard'.")
    low, high = budget["alpha_range"]
    if not low < high:
        raise ConfigError(f"{source}: budget.alpha_range {budget['alpha_range']} must be [low, high] with low < high.")
    from_standard = sorted(set(kinds.FROM_STANDARD) & set(budget["models"]))
    if from_standard:
        raise ConfigError(f"{source}: budget.models {from_standard} start from the standard SAE, which the budget "
                          "target does not yet retrain per budget; list kinds trained from scratch (e.g. joint, "
                          "joint_no_interaction, param_matched).")


def _synthetic(section: dict[str, Any] | None, source: str) -> SyntheticSettings | None:
    if section is None:
        return None
    variants = [SyntheticVariant(**v) for v in section["variants"]]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: synthetic.variants names must be unique (got {names}).")
    for variant in variants:
        if variant.k > variant.width:
            raise ConfigError(f"{source}: synthetic variant {variant.name!r} has k = {variant.k} > width = "
                              f"{variant.width}.")
    if 0 not in section["strengths"]:
        raise ConfigError(f"{source}: synthetic.strengths must include 0 (the null every planted strength is "
                          "compared with).")
    trio = {"joint", "joint_no_interaction", "param_matched"}
    missing = trio - set(section["kinds"])
    if missing and (missing != trio or "standard" not in section["kinds"]):
        raise ConfigError(f"{source}: synthetic.kinds must include {sorted(missing)} (the interaction term and "
                          "its references, for the power curve), or none of them and 'standard' (the pair "
                          "product test alone).")
    built_on_standard = sorted(set(kinds.FROM_STANDARD) & set(section["kinds"]))
    if built_on_standard and "standard" not in section["kinds"]:
        raise ConfigError(f"{source}: synthetic.kinds {built_on_standard} start from the standard SAE; add "
                          "'standard'.")
    return SyntheticSettings(**{**section, "tokens": dict(section["tokens"]), "strengths": list(section["strengths"]),
                                "variants": variants, "kinds": list(section["kinds"])})


def load_settings(path: str | Path | None = None, json_text: str | None = None) -> Settings:
    """Settings from a YAML file or a JSON string (what Snakemake rules pass), validated, defaults filled."""
    if (path is None) == (json_text is None):
        raise ConfigError("give exactly one of a config file or a JSON config string")
    if path is not None:
        return Settings.from_dict(read_config_file(path), source=str(path))
    try:
        loaded = json.loads(json_text)  # type: ignore[arg-type]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config-json is not valid JSON: {exc}") from exc
    return Settings.from_dict(loaded, source="--config-json")


# ---------------------------------------------------------------------------------------------------------
# config/README.md, generated from the configs' header comments and the schema's descriptions


def _schema_rows(node: Mapping[str, Any], path: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key under ``node``, depth first."""
    rows = []
    for name, sub in node.get("properties", {}).items():
        key = f"{path}.{name}" if path else name
        kind = sub.get("type", "")
        kind = " or ".join(kind) if isinstance(kind, list) else str(kind)
        if "enum" in sub:
            kind += " (" + ", ".join(str(v) for v in sub["enum"]) + ")"
        default = json.dumps(sub["default"]) if "default" in sub and sub["default"] != {} else ""
        description = " ".join(str(sub.get("description", "")).split())
        rows.append((key, kind, default, description))
        rows += _schema_rows(sub, key)
        items = sub.get("items")
        if isinstance(items, Mapping) and "properties" in items:
            rows += _schema_rows(items, f"{key}[]")
    return rows


def _header_comment(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(line for line in lines if line)


def config_readme(config_dir: str | Path) -> str:
    """The text of ``config/README.md``: every shipped config with its header comment, then every key of the
    schema with its type, default and description."""
    config_dir = Path(config_dir)
    out = ["# Configuration", "",
           "Generated by `python -m featint config-docs` from the configs' header comments and the descriptions in",
           "`config/schema.yaml` (`src/featint/schema.yaml`); a test keeps it in step. Run a config with",
           "`snakemake --cores 8 --configfile config/<name>.yaml`; keys left out take the defaults below, and an",
           "unknown key or a wrong type stops the workflow at DAG start naming the key.", "",
           "## Shipped configurations", "",
           "| file | what it is |", "|---|---|"]
    for path in sorted(config_dir.glob("*.yaml")) + sorted(config_dir.glob("*.tsv")):
        if path.name == "schema.yaml":
            continue
        header = _header_comment(path) or "(no header comment)"
        out.append(f"| `{path.name}` | {header.replace('|', '/')} |")
    out += ["", "## Every key", "", "| key | type | default | description |", "|---|---|---|---|"]
    for key, kind, default, description in _schema_rows(load_schema()):
        out.append(f"| `{key}` | {kind} | {default.replace('|', '/')} | {description.replace('|', '/')} |")
    return "\n".join(out) + "\n"
