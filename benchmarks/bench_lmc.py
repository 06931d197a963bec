"""Linear mode connectivity on offline test beds: how much each alignment variant reduces the
distance between two models and the loss barrier on the path between them.

    python benchmarks/bench_lmc.py [--workdir bench_out/lmc] [--device cpu]

Test beds (all built here, nothing downloaded):
- vision: ViT classifiers on scikit-learn's digits: two trained from different seeds ("independent"),
  and two fine-tunes of one trained ViT on digits 0-4 and 5-9 ("fine-tunes").
- language: GPT-2 character models on Python's own standard-library source text (lower-cased to the
  toy tokenizer's characters): two from different seeds, and two fine-tunes of one on different files.
Prints a markdown table (docs/results.md holds a copy with the commands).
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
import torch

# untie: tied heads (the tied GPT-2 pair) are read untied so the final norm folds into a head of their own
PART1 = [
    {"permute": {"residual": True, "heads": True, "ffn": True}},
    {"orthogonal": {"residual": True, "untie": True}},
    {"rotate": {}},
    {"rescale": {}},
]


def activations(train_data: Path) -> list[dict]:
    """Part 1 with both stream maps and the per-layer permutations found from activations on the training data."""
    data = {"method": "activations", "data": str(train_data.resolve()), "batches": 16, "batch_size": 32}
    return [
        {"permute": {"residual": True, "heads": True, "ffn": True, **data}},
        {"orthogonal": {"residual": True, "untie": True, **data}},
        {"rotate": {}},
        {"rescale": {}},
    ]


def variants(train_data: Path) -> dict[str, list[dict]]:
    """Per-layer steps (the rotation-symmetry paper's ablation), then residual-stream weight matching
    (part 1), activation matching (the same maps found from data) and the learned refinement on
    ``train_data`` after either (part 2)."""
    refine = {"refine": {"data": str(train_data.resolve()), "steps": 500, "lr": 0.005}}
    act = activations(train_data)
    return {
        "naive": [],
        "permute": [{"permute": {"ffn": True, "heads": True}}],
        "rotate": [{"rotate": {}}],
        "rotate+permute": [{"rotate": {}}, {"permute": {"ffn": True}}],
        "rotate+permute+rescale": [{"rotate": {}}, {"permute": {"ffn": True}}, {"rescale": {}}],
        "residual permute": PART1[:1],
        "part 1: residual permute+orthogonal+rotate+rescale": PART1,
        "activations: residual permute": act[:1],
        "activations: part 1": act,
        "part 2: part 1 + refine": [*PART1, refine],
        "activations: part 1 + refine": [*act, refine],
    }


# untied head by default; the "tied" pair keeps transformers' default (tied to the input embeddings)
GPT2 = {
    "vocab_size": 64,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 64,
    "tie_word_embeddings": False,
}


def corpus(modules: list[str]) -> str:
    import importlib

    from mergeflow.testing.models import CHARS

    ok = set(CHARS)
    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in modules).lower()
    return "".join(c for c in text if c in ok)


def train_gpt2(
    path: Path, text: str, seed: int, steps: int, init_from: Path | None = None, tied: bool = False
) -> Path:
    import transformers

    from mergeflow.testing.models import save_tokenizer

    torch.manual_seed(seed)
    if init_from is None:
        cfg = {**GPT2, "tie_word_embeddings": tied}
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, bos_token_id=2, eos_token_id=3))
    else:
        model = transformers.GPT2LMHeadModel.from_pretrained(str(init_from))
    save_tokenizer(path)
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ids = torch.tensor(tok(text)["input_ids"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3 if init_from is None else 1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (32,), generator=gen)
        batch = torch.stack([ids[s : s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(str(path))
    return path


def beds(work: Path) -> dict[str, tuple[Path, Path, Path, Path]]:
    """name -> (A, B, held-out data, training data)."""
    from mergeflow.testing import train as tt

    out = {}
    x, y = tt.digits("train")
    xt, yt = tt.digits("test")
    data = tt.save_npz(work / "digits-test.npz", xt, yt)
    train = tt.save_npz(work / "digits-train.npz", x, y)
    v = work / "vit"
    if not (v / "b2" / "config.json").exists():
        tt.train_vit(v / "a1", x, y, seed=11, **tt.DEMO_TRAIN)  # the demo's pair
        tt.train_vit(v / "b1", x, y, seed=12, **tt.DEMO_TRAIN)
        init = tt.train_vit(v / "init", x, y, seed=0, epochs=8)
        tt.train_vit(v / "a2", x[y < 5], y[y < 5], seed=1, epochs=4, init_from=init, lr=1e-3)
        tt.train_vit(v / "b2", x[y >= 5], y[y >= 5], seed=2, epochs=4, init_from=init, lr=1e-3)
    if not (v / "b3" / "config.json").exists():  # weakly regularised: weights stay near their initialisation
        tt.train_vit(v / "a3", x, y, seed=11, **{**tt.DEMO_TRAIN, "weight_decay": 0.01})
        tt.train_vit(v / "b3", x, y, seed=12, **{**tt.DEMO_TRAIN, "weight_decay": 0.01})
    out["ViT digits, independent"] = (v / "a1", v / "b1", data, train)
    out["ViT digits, independent, weight decay 0.01"] = (v / "a3", v / "b3", data, train)
    out["ViT digits, fine-tunes"] = (v / "a2", v / "b2", data, train)
    g = work / "gpt2"
    train_text = corpus(["argparse", "json.decoder", "textwrap"])
    heldout = corpus(["string", "shlex"])
    lines = [heldout[i : i + 60] for i in range(0, min(len(heldout), 60 * 200), 60)]
    gdata = work / "text-heldout.txt"
    gdata.write_text("\n".join(ln.replace("\n", " ") for ln in lines) + "\n")
    gtrain = work / "text-train.txt"
    gtrain.write_text(
        "\n".join(train_text[i : i + 60].replace("\n", " ") for i in range(0, len(train_text), 60)) + "\n"
    )
    if not (g / "b2" / "config.json").exists():
        train_gpt2(g / "a1", train_text, seed=11, steps=400)
        train_gpt2(g / "b1", train_text, seed=12, steps=400)
        init = train_gpt2(g / "init", train_text, seed=0, steps=300)
        train_gpt2(g / "a2", corpus(["argparse"]), seed=1, steps=100, init_from=init)
        train_gpt2(g / "b2", corpus(["json.decoder", "textwrap"]), seed=2, steps=100, init_from=init)
    if not (g / "b3" / "config.json").exists():
        train_gpt2(g / "a3", train_text, seed=11, steps=400, tied=True)
        train_gpt2(g / "b3", train_text, seed=12, steps=400, tied=True)
    out["GPT-2 chars, independent"] = (g / "a1", g / "b1", gdata, gtrain)
    out["GPT-2 chars, independent, tied head"] = (g / "a3", g / "b3", gdata, gtrain)
    out["GPT-2 chars, fine-tunes"] = (g / "a2", g / "b2", gdata, gtrain)
    return out


def main() -> None:
    from mergeflow.eval.barrier import aligned_copy, curve, folds, load_endpoint
    from mergeflow.eval.distance import model_distance
    from mergeflow.io.reader import ModelReader
    from mergeflow.stats.data import load_data

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="bench_out/lmc")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--points", type=int, default=11)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    np.random.seed(0)
    results = {}
    print(
        "| test bed | variant | distance (rel. to ‖A‖²) | barrier | vs naive | midpoint loss | midpoint acc | align s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for bed, (a, b, data_path, train_path) in beds(work).items():
        data = load_data(data_path)
        a_end = load_endpoint(a, torch.device(args.device))
        for k, (name, steps) in enumerate(variants(train_path).items()):
            t0 = time.perf_counter()
            where = work / "aligned" / bed.replace(" ", "_").replace(",", "") / str(k)
            bb = aligned_copy(a, b, steps, where, args.device) if steps else b
            secs = time.perf_counter() - t0 if steps else 0.0
            # an orthogonal stream map folds the anchor's norms too: measure from the anchor a merge averages
            aa = aligned_copy(a, b, steps, where, args.device, keep="anchor") if steps and folds(steps) else a
            dist = model_distance(ModelReader("A", aa), ModelReader("B", bb)).rows()[-1][2]
            c = curve(
                load_endpoint(aa, torch.device(args.device)) if aa != a else a_end, bb, data, args.points
            )
            acc = f"{c['midpoint_accuracy']:.3f}" if "midpoint_accuracy" in c else "-"
            results[f"{bed} / {name}"] = {"distance": dist, "seconds": secs, **c}
            naive = results[f"{bed} / naive"]["barrier"]
            ratio = f"{c['barrier'] / naive:.2f}" if naive > 1e-6 else "-"
            print(
                f"| {bed} | {name} | {dist:.4f} | {c['barrier']:.3f} | {ratio} | {c['midpoint_loss']:.3f} | {acc} | "
                f"{secs:.1f} |",
                flush=True,
            )
        print(
            f"|  | endpoints: loss(A) {c['loss_a']:.3f}, loss(B) {c['loss_b']:.3f} | | | | | | |", flush=True
        )
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
