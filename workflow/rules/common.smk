# Shared helpers for every rule: config validation at DAG start, paths, per-stage config for params.
import json

from snakemake.utils import validate

import featint.config
import featint.lm
import featint.runtime
import featint.kinds as featint_kinds
import featint.saelens as featint_saelens
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


def cpu_share():
    """Share of a job's `threads` that become torch threads. Locally, `--cores` may exceed the machine's CPUs
    (`--cores 8` on 2 cores): Snakemake then runs jobs side by side as if there were 8 cores, so each job
    takes threads x CPUs / cores torch threads instead of oversubscribing the CPUs. A cluster job owns its
    allocation (share 1). Passed on the command line, so changing --cores never reruns a job."""
    try:
        declared = workflow.cores
    except Exception:  # no --cores given (e.g. a cluster executor with --jobs)
        return 1.0
    local = featint.runtime.available_cpus()
    if workflow.local_exec and declared and declared > local:
        return round(local / declared, 4)
    return 1.0


CPU_SHARE = cpu_share()


def stage_config(stage):
    """JSON of the config sections `stage` reads, for `params`: a rule reruns when these change."""
    sections = STAGE_SECTIONS[stage]
    return json.dumps({key: config[key] for key in sections if key in config}, sort_keys=True)
