"""mergeflow search on the digit ViT fine-tunes: trials per minute with 1 worker (in-process) and 2 Ray
workers, and the best score reached after N trials by CMA-ES, TPE and random sampling.

    python benchmarks/bench_search.py [--workdir bench_out/search] [--trials 30]

The test bed: a ViT trained on all of scikit-learn's digits, fine-tuned on digits 0-4 and on 5-9; the space
is task arithmetic's weight per fine-tune and a per-layer weight gradient (3 knots) for the FFNs; the score is
the held-out loss plus half the held-out error (accuracy counted negatively). Prints markdown tables
(docs/search.md holds a copy with the command).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SPACE = """models:
  init: init
  a: {{path: a, params: {{weight: {{search: [0.0, 1.5]}}}}}}
  b: {{path: b, params: {{weight: {{search: [0.0, 1.5]}}}}}}
base: init
merge: {{task_arithmetic: {{}}}}
overrides:
  - match: "*.intermediate.*"
    params: {{lambda: {{search: [0.5, 1.5], knots: 3}}}}
search:
  objective: [{{metric: loss, data: test.npz}}, {{metric: accuracy, data: test.npz, weight: 0.5}}]
  sampler: {sampler}
  trials: {trials}
  seed: {seed}
  write_best: false
"""


def bed(work: Path) -> None:
    from mergeflow.testing import train as tt

    if (work / "b" / "config.json").exists():
        return
    x, y = tt.digits("train")
    init = tt.train_vit(work / "init", x, y, seed=0, epochs=8)
    tt.train_vit(work / "a", x[y < 5], y[y < 5], seed=1, epochs=4, init_from=init, lr=1e-3)
    tt.train_vit(work / "b", x[y >= 5], y[y >= 5], seed=2, epochs=4, init_from=init, lr=1e-3)
    tt.save_npz(work / "test.npz", *tt.digits("test"))


def search(
    work: Path, name: str, sampler: str, trials: int, workers: int, seed: int = 0
) -> tuple[float, list]:
    f = work / f"{name}.yml"
    f.write_text(SPACE.format(sampler=sampler, trials=trials, seed=seed))
    out = work / name
    for p in (out, Path(f"{out}.search.db")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mergeflow",
            "search",
            str(f),
            "-o",
            str(out),
            "--workers",
            str(workers),
            "-q",
        ],
        check=True,
    )
    seconds = time.perf_counter() - start
    rows = json.loads((out / "trials.json").read_text())["trials"]
    return seconds, [r["score"] for r in sorted(rows, key=lambda r: r["trial"])]


def steady_rate(work: Path, name: str) -> float:
    """Trials per minute from the first trial's start to the last one's end (start-up left out)."""
    import optuna

    study = optuna.load_study(study_name="mergeflow-search", storage=f"sqlite:///{work / name}.search.db")
    t = [x for x in study.trials if x.datetime_complete is not None]
    span = (max(x.datetime_complete for x in t) - min(x.datetime_start for x in t)).total_seconds()
    return len(t) / max(span, 1e-9) * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="bench_out/search")
    ap.add_argument("--trials", type=int, default=30)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    bed(work)
    print(
        "| workers | trials | wall s (start-up included) | trials/min, wall | trials/min, first start to last end |"
    )
    print("|---|---|---|---|---|")
    for workers in (1, 2):
        secs, scores = search(work, f"speed{workers}", "random", 24, workers)
        print(
            f"| {workers} | {len(scores)} | {secs:.1f} | {len(scores) / secs * 60:.1f} | "
            f"{steady_rate(work, f'speed{workers}'):.1f} |",
            flush=True,
        )
    marks = [m for m in (5, 10, 20, 30, 50) if m <= args.trials]
    print()
    print("| sampler | " + " | ".join(f"best after {m}" for m in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for sampler in ("cmaes", "tpe", "random"):
        _secs, scores = search(work, sampler, sampler, args.trials, 1)
        best = [min(scores[:m]) for m in marks]
        print(f"| {sampler} | " + " | ".join(f"{b:.4f}" for b in best) + " |", flush=True)
    print(f"| uniform average (linear 0.5/0.5, no search) | {uniform(work):.4f} |" + " |" * (len(marks) - 1))


def uniform(work: Path) -> float:
    from mergeflow.search.run import read_search
    from mergeflow.search.trial import Evaluator

    sf = read_search(work / "cmaes.yml")
    ev = Evaluator(str(work / "cmaes.yml"), str(work), list(sf.section.objective), "cpu")
    return float(ev({"models": {"a": "a", "b": "b"}, "merge": {"linear": {}}})["value"])


if __name__ == "__main__":
    main()
