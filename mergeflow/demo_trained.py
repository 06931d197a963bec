"""Second part of the README's main job: two ViTs trained on scikit-learn's digits from different
seeds, merged naively and after alignment; accuracy, loss barrier, distance and the barrier plot."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("vit-naive-linear.yml", "vit-align-linear.yml")


def run_trained(work: Path, table) -> None:  # noqa: ANN001  (table: demo._table)
    import torch

    from mergeflow import toytrain as tt
    from mergeflow.eval.barrier import barrier_report, plot
    from mergeflow.eval.distance import model_distance
    from mergeflow.graph import run as runner
    from mergeflow.io.reader import ModelReader
    from mergeflow.stats.data import load_data

    t0 = time.perf_counter()
    x, y = tt.digits("train")
    xt, yt = tt.digits("test")
    models = {}
    for seed in (11, 12):
        models[seed] = tt.train_vit(work / "models" / f"vit-seed{seed}", x, y, seed=seed, epochs=20)
    data = tt.save_npz(work / "digits-test.npz", xt, yt)
    print(f"\ntrained two ViTs (digits, 20 epochs, seeds 11 and 12) in {time.perf_counter() - t0:.1f} s")
    rows = [("model / recipe", "test accuracy", "time", "distance to a (rel. |a|^2)")]
    a = models[11]
    for seed, p in models.items():
        dist = model_distance(ModelReader("a", a), ModelReader("m", p)).rows()[-1][2]
        rows.append((f"vit-seed{seed}", f"{tt.accuracy(p, xt, yt):.3f}", "-", f"{dist:.3f}"))
    for recipe in RECIPES:
        opts = runner.Options(device="cpu", force=True)
        prep = runner.prepare(ROOT / "recipes" / recipe, opts)
        res = runner.run(prep, work / "merged" / Path(recipe).stem, opts, progress=False)
        rows.append((recipe, f"{tt.accuracy(res.out, xt, yt):.3f}", f"{res.seconds * 1000:.0f} ms", "-"))
    table(rows)
    from mergeflow.graph.align_recipe import read_steps

    _src, steps = read_steps(str(ROOT / "recipes" / RECIPES[1]), recipe_ok=True)  # the aligned recipe's steps
    t1 = time.perf_counter()
    rep = barrier_report(a, models[12], load_data(data), steps, 11, torch.device("cpu"))
    plot(rep, work / "barrier.png")
    rows = [("variant", "loss barrier", "midpoint loss", "midpoint accuracy")]
    for name, v in rep["variants"].items():
        rows.append((name, f"{v['barrier']:.3f}", f"{v['midpoint_loss']:.3f}", f"{v['midpoint_accuracy']:.3f}"))
    print(f"\nloss along (1-l) a + l b on 360 held-out digits ({time.perf_counter() - t1:.1f} s; plot: "
          f"{work / 'barrier.png'}):")
    table(rows)
    print("Per-layer alignment narrows the gap between independently trained models only a little: their "
          "residual streams use different bases (aligning those is the next step, see docs/results.md).")
