#!/usr/bin/env bash
# The device check on a lent GPU machine, in one command of about ten minutes (benchmarks/gpu_check.py says what
# it checks). That machine has PyTorch with CUDA but no network and no snakemake or transformer-lens, so:
#   here, once:  benchmarks/gpu_check.sh --download     wheels of benchmarks/gpu_check_wheels.txt into .whl/
#                                                      (git-ignored; about 31 MB, within the 64 MiB a call carries)
#   there:       benchmarks/gpu_check.sh               installs .whl/ into /tmp/site, runs the check into $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--download" ]; then
    mkdir -p .whl
    platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64"
    platforms="$platforms --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
    grep -v '^#' benchmarks/gpu_check_wheels.txt | while read -r pin; do
        # a wheel for the machine's Python 3.12, else the source (pure Python, built there without network)
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            $platforms -d .whl "$pin" 2>/dev/null || python3 -m pip download -q --no-deps --no-binary=:all: -d .whl "$pin"
    done
    du -sh .whl
    exit 0
fi
if compgen -G ".whl/*" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 570 python3 benchmarks/gpu_check.py --device cuda --dag --out "${OUT:-benchmarks/results/gpu_check}" "$@"
