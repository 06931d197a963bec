"""Second part of the README's main job: two ViTs trained on scikit-learn's digits from different
seeds, merged naively and after alignment; accuracy, loss barrier, distance and the barrier plot."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (recipes/, docs/)
RECIPES = ("vit-naive-linear.yml", "vit-align-linear.yml", "vit-refine-linear.yml")


def run_trained(work: Path, table) -> tuple[dict, dict]:  # noqa: ANN001  (table: demo._table)
    """Train, merge and measure; returns (accuracies, barrier rows) for the demo's results."""
    import torch

    from mergeflow.eval.barrier import barrier_report
    from mergeflow.eval.barrier_plot import plot
    from mergeflow.eval.distance import model_distance
    from mergeflow.graph import run as runner
    from mergeflow.io.reader import ModelReader
    from mergeflow.stats.data import load_data
    from mergeflow.testing import train as tt

    t0 = time.perf_counter()
    x, y = tt.digits("train")
    xt, yt = tt.digits("test")
    models = {}
    for seed in (11, 12):
        models[seed] = tt.train_vit(work / "models" / f"vit-seed{seed}", x, y, seed=seed, **tt.DEMO_TRAIN)
    data = tt.save_npz(work / "digits-test.npz", xt, yt)
    tt.save_npz(work / "digits-train.npz", x, y)  # what the refinement trains on
    train_seconds = time.perf_counter() - t0
    print(
        f"\ntrained two ViTs (digits, {tt.DEMO_TRAIN['epochs']} epochs, seeds 11 and 12) in {train_seconds:.1f} s"
    )
    vit: dict = {
        "epochs": tt.DEMO_TRAIN["epochs"],
        "train_seconds": round(train_seconds, 1),
        "models": [],
        "merges": [],
    }
    rows: list[tuple[str, ...]] = [("model / recipe", "test accuracy", "time", "distance to a (rel. |a|^2)")]
    a = models[11]
    for seed, p in models.items():
        dist = model_distance(ModelReader("a", a), ModelReader("m", p)).rows()[-1][2]
        rows.append((f"vit-seed{seed}", f"{tt.accuracy(p, xt, yt):.3f}", "-", f"{dist:.3f}"))
        vit["models"].append({"model": f"vit-seed{seed}", "accuracy": rows[-1][1]})
    for recipe in RECIPES:
        opts = runner.Options(device="cpu", force=True, parents=True)
        prep = runner.prepare(ROOT / "recipes" / recipe, opts)
        res = runner.run(prep, work / "merged" / Path(recipe).stem, opts)
        rows.append((recipe, f"{tt.accuracy(res.out, xt, yt):.3f}", f"{res.seconds * 1000:.0f} ms", "-"))
        vit["merges"].append({"recipe": Path(recipe).stem, "accuracy": rows[-1][1]})
    table(rows)
    from mergeflow.graph.align_recipe import read_steps

    _src, steps = read_steps(str(ROOT / "recipes" / RECIPES[2]), recipe_ok=True)  # the refined recipe's steps
    for step in steps:  # its data path is relative to the recipe
        if "refine" in step:
            step["refine"] = {**step["refine"], "data": str((work / "digits-train.npz").resolve())}
    t1 = time.perf_counter()
    rep = barrier_report(a, models[12], load_data(data), steps, 11, torch.device("cpu"))
    plot(rep, work / "barrier.png")
    rows = [("variant", "loss barrier", "vs naive", "midpoint loss", "midpoint accuracy", "align time")]
    naive = rep["variants"]["naive"]["barrier"]
    barrier: dict = {
        "rows": [],
        "endpoints": {
            "loss_a": f"{rep['variants']['naive']['loss_a']:.3f}",
            "loss_b": f"{rep['variants']['naive']['loss_b']:.3f}",
            "examples": rep["examples"],
        },
    }
    for name, v in rep["variants"].items():
        rows.append(
            (
                name,
                f"{v['barrier']:.3f}",
                f"{v['barrier'] / naive:.2f}" if naive > 0 else "-",
                f"{v['midpoint_loss']:.3f}",
                f"{v['midpoint_accuracy']:.3f}",
                f"{v['align_seconds']:.1f} s",
            )
        )
        barrier["rows"].append(
            dict(
                zip(
                    ("variant", "barrier", "ratio", "midpoint_loss", "midpoint_accuracy"),
                    rows[-1][:5],
                    strict=True,
                )
            )
        )
    print(
        f"\nloss along (1-l) a + l b on 360 held-out digits ({time.perf_counter() - t1:.1f} s; plot: "
        f"{work / 'barrier.png'}):"
    )
    table(rows)
    print(
        "Each row adds one step to the ones above it. Weight matching (permute .. rescale, no data) needs "
        "the residual stream's map to help at all; the refinement trains that map on data (docs/results.md)."
    )
    return vit, barrier
