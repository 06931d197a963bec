"""What a search leaves in its output folder: the best recipe (plain, runnable), the trial table (CSV and
JSON) and two plots (score per trial with the running best; parameter importances)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from mergeflow.search.run import FixedPick, accepts
from mergeflow.search.space import materialize


def rows(trials: list[Any]) -> list[dict[str, Any]]:
    out = []
    for t in sorted(trials, key=lambda t: t.number):
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            "score": t.value,
            "seconds": round(float(t.user_attrs.get("seconds", 0.0)), 3),
            "worker": t.user_attrs.get("worker", ""),
            "merged_in": t.user_attrs.get("merged_in", ""),
            "error": t.user_attrs.get("error", ""),
        }
        row.update({f"param:{k}": v for k, v in t.params.items()})
        row.update({f"metric:{k}": v for k, v in (t.user_attrs.get("metrics") or {}).items()})
        out.append(row)
    return out


def best_recipe(tree: Any, params: dict[str, Any], root: Path | None = None) -> dict[str, Any]:
    """The search file's recipe at one trial's values: no search space left. With ``root`` (the search file's
    folder), paths relative to it become absolute, so the recipe runs from wherever it is written."""
    recipe = materialize(tree, FixedPick(params), accepts)
    return recipe if root is None else absolute_paths(recipe, root)


def absolute_paths(recipe: dict[str, Any], root: Path) -> dict[str, Any]:
    """Model paths, adapters, statistics files and alignment data that exist relative to ``root``, made absolute
    (a repository id stays as it is)."""

    def fix(v: Any) -> Any:
        return (
            str((root / v).resolve())
            if isinstance(v, str) and not Path(v).is_absolute() and (root / v).exists()
            else v
        )

    out = dict(recipe)
    models = {}
    for name, entry in (recipe.get("models") or {}).items():
        models[name] = (
            {
                **entry,
                "path": fix(entry.get("path")),
                **({"lora": fix(entry["lora"])} if "lora" in entry else {}),
            }
            if isinstance(entry, dict)
            else fix(entry)
        )
    out["models"] = models
    if isinstance(recipe.get("stats"), dict):
        out["stats"] = {k: fix(v) for k, v in recipe["stats"].items()}
    if isinstance(recipe.get("align"), list):
        out["align"] = [
            {
                n: ({**p, "data": fix(p["data"])} if isinstance(p, dict) and "data" in p else p)
                for n, p in step.items()
            }
            if isinstance(step, dict)
            else step
            for step in recipe["align"]
        ]
    return out


def write_outputs(
    folder: Path, tree: Any, trials: list[Any], best: Any, header: str, root: Path, plots: bool = True
) -> list[str]:
    """Files of the result in ``folder``; their names. ``root``: the search file's folder; ``plots``: draw
    the history and importance plots too."""
    table = rows(trials)
    files = []
    if best is not None:
        text = f"# {header}\n# best trial {best.number}: score {best.value:.6g}\n"
        (folder / "best.yml").write_text(
            text + yaml.safe_dump(best_recipe(tree, best.params, root), sort_keys=False)
        )
        files.append("best.yml")
    keys: list[str] = []
    for r in table:
        keys += [k for k in r if k not in keys]
    with open(folder / "trials.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(table)
    summary = {
        "written_by": "mergeflow",
        "best": None
        if best is None
        else {
            "trial": best.number,
            "score": best.value,
            "params": best.params,
            "metrics": best.user_attrs.get("metrics"),
        },
        "trials": table,
    }
    (folder / "trials.json").write_text(json.dumps(summary, indent=2) + "\n")
    files += ["trials.csv", "trials.json"]
    if not plots:
        return files
    files += plot_history(folder / "history.png", table)
    files += plot_importance(folder / "importance.png", trials)
    return files


def plot_history(path: Path, table: list[dict[str, Any]]) -> list[str]:
    done = [r for r in table if r["state"] == "complete"]
    if not done:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    xs = [r["trial"] for r in done]
    ys = [r["score"] for r in done]
    best, running = float("inf"), []
    for y in ys:
        best = min(best, y)
        running.append(best)
    ax.plot(xs, ys, "o", ms=4, alpha=0.6, label="trial")
    ax.step(xs, running, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("score (minimised)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path, plt)


def plot_importance(path: Path, trials: list[Any]) -> list[str]:
    import optuna
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(done) < 3:
        return []
    try:
        study = optuna.create_study(direction="minimize")
        study.add_trials(done)
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ImportError):  # e.g. no parameter varied
        return []
    if not imp:
        return []
    plt = _pyplot()
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.4), dpi=120)
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA, share of the score's variance)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path, plt)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, plt: Any) -> list[str]:
    fig.tight_layout()
    fig.savefig(str(path), format="png", metadata={"Software": "mergeflow"})
    plt.close(fig)
    return [path.name]
