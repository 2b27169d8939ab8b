from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from featint.config import Settings, load_settings, schema_path, validate_config
from featint.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_filled_in() -> None:
    settings = Settings.from_dict({})
    assert settings.run == "default"
    assert settings.hook.layer == 15 and settings.hook.site == "resid_pre"
    assert settings.extraction.context_length == 128
    assert settings.split.fractions == {"train": 0.8, "validation": 0.1, "test": 0.1}
    assert settings.normaliser.kind == "zscore"


SHIPPED_CONFIGS = sorted(p for p in (REPO / "config").glob("*.yaml") if p.name != "schema.yaml")


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    settings = load_settings(path=path)
    assert settings.run


def test_config_schema_file_is_the_package_schema() -> None:
    assert (REPO / "config" / "schema.yaml").read_text() == schema_path().read_text()


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'extraction\.context_lenght'"):
        validate_config({"extraction": {"context_lenght": 64}})


def test_unknown_top_level_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'trainng'"):
        validate_config({"trainng": {}})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"config key 'hook\.layer'.*not of type 'integer'"):
        validate_config({"hook": {"layer": "fifteen"}})


def test_negative_layer_rejected() -> None:
    with pytest.raises(ConfigError, match=r"hook\.layer"):
        validate_config({"hook": {"layer": -1}})


def test_fractions_must_sum_to_one() -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        validate_config({"split": {"fractions": {"train": 0.5, "validation": 0.1, "test": 0.1}}})


def test_an_auxk_window_beyond_the_budget_is_named(caplog: pytest.LogCaptureFixture) -> None:
    """AuxK counts a latent dead after ``dead_after_tokens`` silent tokens; at or above the budget it never acts
    (config/paper.yaml had 10M over 5.24M). A warning, not an error: short test budgets meet it on purpose."""
    with caplog.at_level(logging.WARNING, logger="featint.config"):
        validate_config({"sae": {"auxk": {"dead_after_tokens": 10_000_000}}, "training": {"tokens": 5_242_880}})
    assert "dead_after_tokens (10,000,000) is not below training.tokens (5,242,880)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="featint.config"):
        validate_config({"sae": {"auxk": {"dead_after_tokens": 10_000_000, "enabled": False}},
                         "training": {"tokens": 5_242_880}})
        validate_config({"sae": {"auxk": {"dead_after_tokens": 10_000_000}}})  # a stage given the sae section only
        validate_config({"sae": {"auxk": {"dead_after_tokens": 524_288}}, "training": {"tokens": 5_242_880}})
    assert "dead_after_tokens" not in caplog.text


def test_local_model_needs_path() -> None:
    with pytest.raises(ConfigError, match="model.path"):
        validate_config({"model": {"source": "local"}})


def test_json_and_yaml_give_the_same_settings(tmp_path: Path) -> None:
    raw = {"run": "x", "hook": {"layer": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    import json

    assert load_settings(path=path).raw == load_settings(json_text=json.dumps(raw)).raw


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(path="no/such/config.yaml")


def test_plan_of_the_paper_config_needs_no_model_download() -> None:
    """The paper's shards: 5,242,880 train tokens x d 3200 x float16 = 33.6 GB (about 32 GiB), from the shape
    the config declares; the joint model's state is 4 x its parameters in float32."""
    from featint.config import load_settings
    from featint.models import joint_parameter_count
    from featint.plan import model_shape, plan

    settings = load_settings("config/paper.yaml")
    shape = model_shape(settings, None)
    table = plan(settings, shape).set_index("item")
    assert table.loc["shards train", "value"] == 5_242_880 * 3200 * 2
    assert table.loc["shards train", "value"] / 2**30 == pytest.approx(31.25)
    joint = joint_parameter_count(3200, settings.sae, settings.nfm)
    assert table.loc["joint: weights + grads + Adam", "value"] == 16 * joint
    assert table.loc["code cache per standard seed", "value"] == 0  # the paper config re-encodes
    assert table.loc["results disk (shards + code caches + models)", "value"] > table.loc["shards train", "value"]


def test_extraction_stops_when_the_disk_cannot_hold_the_shards(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from featint.plan import DiskSpaceError, check_disk

    check_disk(1, tmp_path / "not" / "yet", "a byte")  # the nearest existing parent is probed
    with pytest.raises(DiskSpaceError, match="needs .* free; free space there, lower extraction.max_tokens"):
        check_disk(1e18, tmp_path, "the train shards")


def test_config_readme_is_generated_and_every_key_is_described() -> None:
    from featint.config import _schema_rows, config_readme, load_schema

    undescribed = [key for key, _, _, description in _schema_rows(load_schema()) if not description]
    assert not undescribed, f"schema keys without a description: {undescribed}"
    expected = config_readme(Path("config"))
    assert Path("config/README.md").read_text(encoding="utf-8") == expected, (
        "config/README.md is out of date: run `python -m featint config-docs`")
    assert "(no header comment)" not in expected  # every shipped config says what it is


def test_every_stage_reads_only_the_config_sections_it_declares() -> None:
    """The stage contract, on the source: a rule passes a stage only its declared sections (so only their
    changes rerun it), so a section its function reads but does not declare would silently take its default (the
    bug where ``train`` ignored a configured ``model.device``). Every ``settings.<section>`` a stage function
    reads is declared; a stage without config reads none. (At run time the restriction itself enforces it,
    deeper than the function's own lines: the next test.)"""
    import inspect
    import re

    from featint import cli
    from featint.config import Settings

    sections = {name for name in Settings.__dataclass_fields__ if name != "raw"}
    checked = 0
    for name, declared in cli.STAGES.items():
        if declared.sections == cli.EVERY_SECTION:
            continue
        read = set(re.findall(r"settings\.(\w+)", inspect.getsource(declared.run))) & sections
        assert read <= set(declared.sections or ()), f"{name} reads {sorted(read - set(declared.sections or ()))}"
        checked += 1
    assert checked >= 30 and set(cli.STAGE_SECTIONS) <= set(cli.STAGES)


def test_a_stage_reading_an_undeclared_section_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages receive their sections only: reading another one, anywhere below the stage function, raises with
    the stage and section named, through the CLI as in a rule (the ``model.device`` bug fails here)."""
    from featint import cli
    from featint.config import Settings, UndeclaredSectionError

    settings = Settings.from_dict({"model": {"device": "cpu"}, "sae": {"k": 64}})
    restricted = settings.restricted(("sae", "training"), "train")
    assert restricted.sae.k == 64 and restricted.training == settings.training
    assert set(restricted.raw) <= {"sae", "training"}
    with pytest.raises(UndeclaredSectionError, match="stage 'train' reads config section 'model'"):
        _ = restricted.model.device
    with pytest.raises(UndeclaredSectionError):
        bool(restricted.synthetic)
    with pytest.raises(ValueError, match="unknown config sections"):
        settings.restricted(("modle",), "train")
    changed = restricted.with_overrides({("sae", "k"): 32}, "an ablation row")  # overrides keep the restriction
    assert changed.sae.k == 32 and changed.training == settings.training
    with pytest.raises(UndeclaredSectionError):
        _ = changed.model.device

    seen = {}

    def device_of(args: object, settings: Settings) -> None:  # reads model, declares sae only
        seen["sae"] = settings.sae.k
        seen["device"] = settings.model.device

    monkeypatch.setitem(cli.STAGES, "probe", cli.Stage("probe", device_of, "a test stage", ("sae",), ()))
    config = json.dumps({"sae": {"k": 64}, "model": {"device": "cpu"}})
    with pytest.raises(UndeclaredSectionError, match="add 'model' to its sections"):
        cli.main(["probe", "--config-json", config])
    assert seen == {"sae": 64}
    monkeypatch.setitem(cli.STAGES, "probe", cli.Stage("probe", device_of, "a test stage", ("sae", "model"), ()))
    assert cli.main(["probe", "--config-json", config]) == 0 and seen["device"] == "cpu"


def test_the_parser_and_the_rules_sections_come_from_the_declarations() -> None:
    from featint import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a.choices, dict)).choices
    assert set(commands) == set(cli.STAGES)
    for name, declared in cli.STAGES.items():
        options = {flag for action in commands[name]._actions for flag in action.option_strings}
        assert ("--config-json" in options) == (declared.sections is not None), name
        assert {flag for a in declared.args for flag in a.flags} <= options
        assert commands[name].get_default("stage") is declared
        if declared.sections not in (None, cli.EVERY_SECTION):
            assert cli.STAGE_SECTIONS[name] == declared.sections


def test_no_schema_description_is_split_into_a_bogus_key() -> None:
    """An unquoted comma in a flow mapping (``{..., description: a, b}``) ends the description there and makes the
    rest a key with a null value; every property may hold only JSON-schema keywords."""
    from featint.config import load_schema

    keywords = {"type", "default", "description", "enum", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "properties", "additionalProperties", "items", "minItems", "maxItems",
                "uniqueItems", "required", "oneOf", "anyOf", "allOf", "not", "pattern", "minLength", "$ref",
                "const", "propertyNames", "patternProperties", "minProperties", "maxProperties", "if", "then", "else"}
    stray: list[str] = []

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                stray.extend(f"{path}{key}: {bad!r}" for bad in set(value) - keywords)
                walk(value, f"{path}{key}.")
            for key in ("items", "additionalProperties"):
                walk(node.get(key), path)
            for key in ("oneOf", "anyOf", "allOf"):
                for option in node.get(key, []):
                    walk(option, path)

    walk(load_schema(), "")
    assert not stray, f"schema properties with keys that are not JSON-schema keywords (a split description?): {stray}"


def test_interventions_on_a_model_the_run_does_not_train_stop_at_validation() -> None:
    """A run without `joint` keeps the default interventions.models [sequential, joint]: named at validation
    (the DAG used to drop the kind silently and fail late in the report)."""
    with pytest.raises(ConfigError, match=r"interventions\.models \['joint'\] are not in models"):
        validate_config({"models": ["standard", "sequential"], "convergence": {"models": []},
                         "interventions": {"models": ["sequential", "joint"]}})
    validate_config({"models": ["standard", "sequential"], "convergence": {"models": []},
                     "interventions": {"models": ["sequential"]}})
    validate_config({"models": ["standard"], "convergence": {"models": []}})  # not judged on the defaults


def test_every_settings_dataclass_has_exactly_its_schema_sections_fields_and_their_descriptions() -> None:
    """The schema is the one definition of each key: a settings dataclass holds exactly the properties of its
    section (``raw`` aside), and its docstring carries each property's description."""
    import dataclasses

    from featint.config import SECTIONS, Settings, schema_node

    assert Settings in SECTIONS and len(SECTIONS) >= 24
    for cls, path in SECTIONS.items():
        properties = schema_node(path).get("properties", {})
        fields = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        assert fields == set(properties), (cls.__name__, sorted(fields ^ set(properties)))
        for name, spec in properties.items():
            assert f"``{name}``: {spec['description']}" in (cls.__doc__ or ""), (cls.__name__, name)
    nested = {f.type for cls in SECTIONS for f in dataclasses.fields(cls)}
    assert "TrainingSettings" in nested and "AuxKSettings" in nested  # every nested section is a SECTIONS class
