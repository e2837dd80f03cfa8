"""Run simulation schedules from the command line (``make sim SEEDS=100000``).

    .venv/bin/python tests/sim/run.py --seeds 1000          # seeds 0..999
    .venv/bin/python tests/sim/run.py --seed 4242 --trace   # replay one, printing its trace

The last line printed is one JSON object: schedules run, failures (with their seeds), the
faults injected and the prompts run. Exits 1 if any schedule failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulation import FULL, SMALL, SimFailure, scratch_folder, simulate, template


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many schedules to run")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument("--trace", action="store_true", help="print the trace of each schedule")
    parser.add_argument("--scale", choices=("small", "full"), default="full", help="schedule size")
    parser.add_argument("--stop", action="store_true", help="stop at the first failure")
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    scratch = scratch_folder()
    templates = template(scratch / "template", 5)
    totals: Counter[str] = Counter()
    failures: list[int] = []
    started = time.monotonic()
    try:
        for seed in seeds:
            try:
                outcome = simulate(
                    seed,
                    templates,
                    scratch,
                    SMALL if args.scale == "small" else FULL,
                    on_trace=print if args.trace else None,
                )
            except SimFailure as exc:
                print(exc, file=sys.stderr)
                failures.append(seed)
                if args.stop:
                    break
                continue
            totals.update(outcome.stats)
            totals["converge_ms"] += outcome.converge_ms
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ran = len(seeds) if not args.stop or not failures else seeds.index(failures[0]) + 1
    print(
        json.dumps(
            {
                "schedules": ran,
                "first_seed": seeds[0],
                "failed": len(failures),
                "failed_seeds": failures[:50],
                "seconds": round(time.monotonic() - started, 1),
                **dict(sorted(totals.items())),
            }
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
