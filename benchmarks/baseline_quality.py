"""Quality bar for the standard SAE: train it at a reference setting on an existing run's activations and
print its test FVU next to a reference value measured with another implementation.

    python benchmarks/baseline_quality.py --activations results/default/activations \\
        [--n-features 4608 --k 32 --tokens 2097152 --lr 0.001 --reference-fvu 0.22]

The default reference is the plain TopK SAE of the workplace's MEASURED.md (576 -> 4608, k = 32, 2M token-steps,
lr 1e-3, unit-norm decoder, tied init, b_dec at the mean, outliers excluded): test FVU 0.22 on the same model,
layer and corpus (64-token windows there, 128 here). Writes nothing under results/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from featint.activations import ActivationStore
from featint.config import Settings
from featint.evaluation import reconstruction_metrics
from featint.models import load_model
from featint.normaliser import Normaliser
from featint.runtime import set_threads
from featint.training import TrainOutputs, run_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--activations", default="results/default/activations")
    parser.add_argument("--n-features", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=2_097_152)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--decoder-norm", default="unit", choices=("unit", "free"))
    parser.add_argument("--reference-fvu", type=float, default=0.22)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    settings = Settings.from_dict({
        "sae": {"n_features": args.n_features, "k": args.k, "decoder_norm": args.decoder_norm},
        "nfm": {"truncated_k": min(args.k, 23)},
        "training": {"tokens": args.tokens, "lr": args.lr, "checkpoint_every": 10**9, "validate_every": 10**9},
    })
    activations = Path(args.activations)
    with tempfile.TemporaryDirectory() as tmp:
        run_train(settings, "standard", 0, activations, TrainOutputs.in_folder(tmp), args.lr)
        model, _ = load_model(Path(tmp) / "weights.safetensors")
    normaliser = Normaliser.load(activations / "normaliser.safetensors")
    test = ActivationStore(activations / "test")
    for token_set in ("selected", "with_outliers"):
        result = reconstruction_metrics(model, normaliser, test, token_set)
        sae = result["components"]["sae"]  # type: ignore[index]
        print(f"standard SAE d->{args.n_features}, k={args.k}, {args.tokens} tokens, lr {args.lr:g}, "
              f"{args.decoder_norm} decoder, {normaliser.kind} normaliser: test FVU ({token_set}) "
              f"{sae['fvu']:.4f} normalised space, {sae['fvu_raw']:.4f} raw space; "
              f"dead {result['dead_fraction']:.3f}")
    print(f"reference FVU (outliers excluded): {args.reference_fvu}")


if __name__ == "__main__":
    main()
