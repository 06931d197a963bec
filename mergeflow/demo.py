"""The README's main job: build small models offline, run the shipped recipes on them, and show
what was merged, where it went, and that every merged model loads and gives finite outputs."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_RECIPES = (
    "llama-linear.yml",
    "llama-task-arithmetic.yml",
    "llama-ties.yml",
    "llama-dare.yml",
    "llama-slerp.yml",
)


def build_models(models_dir: Path) -> dict[str, Path]:
    """A random Llama-style base and two 'fine-tunes' of it (base plus seeded noise)."""
    from mergeflow.toymodels import build

    models_dir.mkdir(parents=True, exist_ok=True)
    base = build("llama", models_dir / "base", seed=0)
    return {
        "base": base,
        "math": build("llama", models_dir / "math", seed=1, perturb_from=base),
        "code": build("llama", models_dir / "code", seed=2, perturb_from=base),
    }


def _loss(model_dir: Path, text: str) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, labels=ids)
    if not torch.isfinite(out.logits).all():
        raise SystemExit(f"{model_dir}: non-finite logits")
    return float(out.loss)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="demo_out", help="where models and merges are written")
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
    )
    text = "the quick brown fox jumps over the lazy dog. "
    rows = [(name, "-", "-", f"{_loss(p, text):.4f}", str(p)) for name, p in models.items()]
    for recipe in DEMO_RECIPES:
        out = work / "merged" / Path(recipe).stem
        opts = runner.Options(device="cpu", force=True)
        prep = runner.prepare(ROOT / "recipes" / recipe, opts)
        res = runner.run(prep, out, opts, progress=False)
        rows.append(
            (
                recipe,
                prep.recipe.merge.name,
                f"{res.plan.n_tensors} in {res.seconds * 1000:.0f} ms",
                f"{_loss(res.out, text):.4f}",
                str(res.out),
            )
        )
    widths = [
        max(len(r[i]) for r in rows + [("model / recipe", "operator", "tensors", "LM loss", "output")])
        for i in range(5)
    ]
    header = ("model / recipe", "operator", "tensors", "LM loss", "output")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(
        f"done in {time.perf_counter() - t0:.1f} s; every merged model loaded with transformers and gave finite "
        "logits"
    )


if __name__ == "__main__":
    main()
