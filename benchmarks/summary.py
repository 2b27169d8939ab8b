"""Write ``benchmarks/results/summary.md`` from the measurements the benchmark scripts recorded (``make bench``
runs them, then this).

    python benchmarks/summary.py
"""

from __future__ import annotations

import json
import time

from record import RESULTS

ORDER = ("bench_extraction", "bench_training", "bench_behaviour")


def main() -> None:
    runs = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    if not runs:
        raise SystemExit(f"no measurements in {RESULTS}: run `make bench`")
    first = next(iter(runs.values()))
    lines = ["# Benchmarks", "",
             (f"Written by `make bench` ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC) from "
             "`benchmarks/results/bench/*.json`; every ratio is measured within one script's run, so the "
             "machine's speed cancels. Nothing gates on these numbers."), "",
             f"- torch {first['torch']}, Python {first['python']}, CPU: {first['cpu']}",
             f"- threads: {', '.join(sorted({str(run['threads']) for run in runs.values()}))}", "",
             "| benchmark | quantity | value | goal | meets | shapes | note |", "|---|---|---|---|---|---|---|"]
    for name in sorted(runs, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        for m in runs[name]["measurements"]:
            meets = {True: "yes", False: "**no**", None: ""}[m["meets"]]
            lines.append(f"| {name} | {m['quantity']} | {m['value']:,.3g} {m['unit']} | {m['goal']} | {meets} | "
                         f"{m['shapes']} | {m['note']} |")
    out = RESULTS.parent / "summary.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
