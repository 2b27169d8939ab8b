"""Started by Python in every process when this folder is on ``PYTHONPATH``: with ``FEATINT_SIMULATED_CUDA=1``
the process runs on the simulated CUDA device of ``tests/simulated_cuda.py`` (each job of a Snakemake DAG)."""

import os
import sys

if os.environ.get("FEATINT_SIMULATED_CUDA") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import simulated_cuda

    simulated_cuda.install()
