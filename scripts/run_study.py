"""Train a notebook study's arms and seeds and keep them as records (what ``-p retrain True`` does).

    python scripts/run_study.py --profile quick --study switch
    python scripts/run_study.py --profile quick --study switch --arms "20 -> 28 px" --seeds 0

Some studies are longer than ``make reproduce`` has (``kept`` in their plan, ``lib/profiles.py``):
their notebook shows the runs the repository keeps in ``figures/records/<dataset>/<profile>/<study>/``
and trains nothing. This script trains them through the same ``lib.studies.run_arms`` (finished runs
under ``--runs`` are reused) and copies each finished run there without weights or checkpoints:
config, per-epoch metrics, ``metrics.json``. Not imported by any notebook.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lib.profiles import study
from lib.runs import resolve
from lib.studies import run_arms

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--study", required=True)
    p.add_argument("--arms", nargs="*", help="only these arms (default: all of the plan's)")
    p.add_argument("--seeds", nargs="*", type=int, help="only these seeds (default: the plan's 0 .. seeds-1)")
    p.add_argument("--runs", default="runs", help="where the runs train (reused when finished)")
    p.add_argument("--processes", type=int, help="runs side by side (default: one per core)")
    p.add_argument("--no-keep", action="store_true", help="train only; copy nothing to figures/records/")
    args = p.parse_args(argv)
    try:
        plan = study(args.profile, args.study)
        arms = plan.get("arms")
        if not arms:
            raise ValueError(f"the {args.study} study of {args.profile} names no arms in lib/profiles.py")
        unknown = set(args.arms or []) - set(arms)
        if unknown:
            raise ValueError(f"unknown arm(s) {sorted(unknown)}; the plan has: {', '.join(arms)}")
        arms = {name: arms[name] for name in args.arms} if args.arms else arms
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = args.seeds if args.seeds is not None else list(range(plan["seeds"]))
    parent = resolve(args.runs) / args.dataset / args.profile / args.study
    runs = run_arms(args.profile, args.dataset, args.study, arms, seeds, parent, processes=args.processes)
    if not args.no_keep:
        records = REPO / "figures" / "records" / args.dataset / args.profile / args.study
        for run_dir in runs.run_dir:
            source = resolve(run_dir)
            target = records / source.relative_to(parent)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pt", "checkpoints", ".lock", ".*"))
        print(f"kept {len(runs)} run(s) in {records.relative_to(REPO)}/")
    print(runs[["arm", "seed", "test_accuracy", "val_accuracy", "train_seconds"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
