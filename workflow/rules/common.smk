# Shared helpers for every rule: config validation at DAG start, paths, per-stage config for params.
import json

from snakemake.utils import validate

import featint.config
import featint.lm
import featint.models as featint_models
import featint.training as featint_training
from featint.cli import STAGE_SECTIONS
from featint.config import SPLITS

# Rejects unknown keys / wrong types before any job runs (featint's message names the key), then lets
# Snakemake's validator fill the schema defaults into `config` itself.
SETTINGS = featint.config.Settings.from_dict(config, source="workflow config")
validate(config, featint.config.schema_path())

# Conda env for `--sdm conda` (ignored otherwise); rules run `python -m featint` from it.
FEATINT_ENV = "../../envs/featint.yaml"

RUN = SETTINGS.run
RESULTS = f"results/{RUN}"
LOGS = f"logs/{RUN}"
BENCH = f"benchmarks/results/{RUN}"
LM_DIR = str(featint.lm.model_dir(SETTINGS.model))

# A local model directory must exist now, not halfway through the DAG; a prepared one is checked by its rule.
if not featint.lm.needs_preparation(SETTINGS.model):
    featint.lm.check_model_dir(LM_DIR)
    featint.lm.HookPoint.from_settings(SETTINGS.hook).check(featint.lm.read_n_layers(LM_DIR), where=LM_DIR)


def stage_config(stage):
    """JSON of the config sections `stage` reads, for `params`: a rule reruns when these change."""
    sections = STAGE_SECTIONS[stage]
    return json.dumps({key: config[key] for key in sections}, sort_keys=True)
