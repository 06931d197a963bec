"""The README's main job: build small models offline, run the shipped recipes on them, and show
what was merged, where it went, and that every merged model loads and gives finite outputs."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the repository (recipes/, docs/)
DEMO_RECIPES = (
    "llama-linear.yml",
    "llama-task-arithmetic.yml",
    "llama-ties.yml",
    "llama-dare.yml",
    "llama-slerp.yml",
    "llama-reference-linear.yml",
    "llama-naive-linear.yml",
    "llama-align-linear.yml",
)


def build_models(models_dir: Path) -> dict[str, Path]:
    """A random Llama-style base and two 'fine-tunes' of it (base plus seeded noise)."""
    from mergeflow.testing.models import build

    models_dir.mkdir(parents=True, exist_ok=True)
    base = build("llama", models_dir / "base", seed=0)
    from mergeflow.testing.scramble import scramble_model

    math = build("llama", models_dir / "math", seed=1, perturb_from=base, perturb_scale=0.005)
    return {
        "base": base,
        "math": math,
        "code": build("llama", models_dir / "code", seed=2, perturb_from=base, perturb_scale=0.005),
        "math-scrambled": scramble_model(
            math, models_dir / "math-scrambled", seed=3, heads_perm=True, replace=True
        ),  # the demo's own folder, rebuilt each run
    }


def _evaluate(model_dir: Path, text: str) -> tuple[float, object]:
    """(language-model loss on ``text``, logits), refusing non-finite outputs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, labels=ids)
    if not torch.isfinite(out.logits).all():
        raise SystemExit(f"{model_dir}: non-finite logits")
    return float(out.loss), out.logits


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="demo_out", help="where models and merges are written")
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="also write the results to docs/demo-results.json and the numbers blocks of README.md and "
        "docs/results.md (see mergeflow.demo.docs)",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    from mergeflow.graph import run as runner

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    work = Path(args.workdir).resolve()
    if work != (ROOT / "demo_out").resolve():
        raise SystemExit(
            "the shipped recipes refer to ../demo_out/models; run from the repository root "
            "with the default --workdir"
        )
    t0 = time.perf_counter()
    models = build_models(work / "models")
    print(
        f"built {len(models)} tiny Llama models in {time.perf_counter() - t0:.1f} s under {work / 'models'}"
        " (math-scrambled: math with its heads, head rotations, scales and FFN neurons reshuffled)"
    )
    text = "the quick brown fox jumps over the lazy dog. "
    rows: list[tuple[str, ...]] = [
        ("model / recipe", "operator", "tensors, time", "LM loss", "max |logits - reference|", "output")
    ]
    for name, p in models.items():
        rows.append((name, "-", "-", f"{_evaluate(p, text)[0]:.4f}", "-", str(p)))
    reference: Any = None  # the reference recipe's logits
    alignment = None
    llama: list[dict[str, str]] = []
    for recipe in DEMO_RECIPES:
        out = work / "merged" / Path(recipe).stem
        opts = runner.Options(device="cpu", force=True, parents=True)
        prep = runner.prepare(ROOT / "recipes" / recipe, opts)
        res = runner.run(prep, out, opts)
        loss, logits = _evaluate(res.out, text)
        if recipe == "llama-reference-linear.yml":
            reference = logits
        gap = f"{float((logits - reference).abs().max()):.2e}" if reference is not None else "-"
        if res.alignment is not None:
            alignment = res.alignment
        op = prep.recipe.merge.name + (" + align" if prep.recipe.align else "")
        rows.append(
            (
                recipe,
                op,
                f"{res.plan.n_tensors}, {res.seconds * 1000:.0f} ms",
                f"{loss:.4f}",
                gap,
                str(res.out),
            )
        )
        llama.append({"recipe": recipe, "operator": op, "loss": f"{loss:.4f}", "gap": gap})
    _table(rows)
    if alignment is not None:
        from mergeflow.align.report import table

        print("\nalignment of math-scrambled to base (squared distance to the anchor after each step):")
        print(table(alignment))
    print(
        "The reference is the average of base and the unscrambled math model: the aligned merge reproduces it, "
        "the naive one does not."
    )
    from mergeflow.demo.trained import run_trained

    vit, barrier = run_trained(work, _table)
    seconds = time.perf_counter() - t0
    print(f"\ndone in {seconds:.1f} s; every merged model loaded with transformers and gave finite outputs.")
    results = {
        "environment": _environment(),
        "seconds": round(seconds, 1),
        "llama": llama,
        "alignment": _distances(alignment),
        "vit": vit,
        "barrier": barrier,
    }
    (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.write_docs:
        from mergeflow.demo.docs import write_docs

        for path in write_docs(results, ROOT):
            print(f"wrote {path}")


def _environment() -> dict[str, object]:
    import platform

    import torch

    import mergeflow
    from mergeflow.testing.train import TRAIN_THREADS

    return {
        "mergeflow": mergeflow.__version__,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "train_threads": TRAIN_THREADS,
    }


def _distances(summary: dict | None) -> dict[str, float]:
    """Whole-model squared distance of the aligned model to the anchor, before and after alignment."""
    stages: dict[str, Any] = next(iter((summary or {}).get("totals", {}).values()), {})
    if not stages:
        return {"before": 0.0, "after": 0.0}
    return {"before": stages["before"]["total"], "after": list(stages.values())[-1]["total"]}


if __name__ == "__main__":
    main()
