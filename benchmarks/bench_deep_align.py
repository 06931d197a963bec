"""Deep-Align reproduced in its own setting: a zoo of digits MLPs (64-128-128-128-10, the paper's MNIST MLPs
at the 8x8 digits' size), an aligner trained on it, and the paper's comparisons on held-out pairs: the loss
barrier along the linear path after no alignment, weight matching, activation matching, Sinkhorn re-basin and
Deep-Align; Deep-Align as the initialisation of weight matching; seconds per pair; and the recovery of planted
permutations of held-out models (augmented copies).

    python benchmarks/bench_deep_align.py                  # zoo 64 models, 1500 training steps, 8 pairs
    python benchmarks/bench_deep_align.py --zoo 300 --steps 3000 --channels 32 --depth 4  # closer to the paper's scale

Prints a markdown table (the one in docs/deep-align.md). The zoo is built in --workdir (kept with --keep, and
reused when it is already there)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from mergeflow.deepalign.encoder import DeepAlign
from mergeflow.deepalign.matching import activation_matching, identity, weight_matching
from mergeflow.deepalign.mlp import forward, lerp, load_mlp, permute
from mergeflow.deepalign.pairs import Augment, supervised_pair
from mergeflow.deepalign.rebasin import sinkhorn_rebasin
from mergeflow.deepalign.train import Settings, predict, train
from mergeflow.testing.zoo import PAPER_SIZES, build_zoo, digits_flat


def path_losses(a, b, x, y, points=5):
    with torch.no_grad():
        return [float(F.cross_entropy(forward(lerp(a, b, t), x), y)) for t in torch.linspace(0, 1, points)]


def barrier(losses):
    n = len(losses) - 1
    return max(v - ((1 - i / n) * losses[0] + (i / n) * losses[-1]) for i, v in enumerate(losses))


def recovered(perms, target):
    """Fraction of hidden units put back where they were, averaged over the hidden layers."""
    return statistics.mean(float((p == q).float().mean()) for p, q in zip(perms, target, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=int, default=64, help="zoo models (pairs*2 of them held out)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of each zoo model")
    ap.add_argument("--steps", type=int, default=1500, help="aligner training steps")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=8, help="held-out pairs compared")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the zoo and the aligner's checkpoint")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="deep-align-"))
    reused = (work / "zoo").is_dir()
    t0 = time.perf_counter()
    paths = build_zoo(work / "zoo", args.zoo, PAPER_SIZES, epochs=args.epochs)
    zoo_s = time.perf_counter() - t0
    nets = [load_mlp(p)[1] for p in paths]
    held = 2 * args.pairs
    train_nets, test_nets = nets[:-held], nets[-held:]
    x, y = digits_flat("train")
    xt, yt = digits_flat("test")
    settings = Settings(
        steps=args.steps, channels=args.channels, depth=args.depth, save_every=max(1, args.steps // 10)
    )
    t0 = time.perf_counter()
    ckpt = work / f"aligner-{args.steps}-{args.channels}x{args.depth}"  # one per training setting
    ckpt.mkdir(exist_ok=True)
    encoder, log = train(train_nets, (x, y), settings, ckpt)
    train_s = time.perf_counter() - t0
    timing = ckpt / "train_seconds"  # a rerun on a kept --workdir reuses the trained aligner and its time
    if timing.exists():
        train_s = float(timing.read_text())
    else:
        timing.write_text(f"{train_s:.1f}\n")
    torch.manual_seed(settings.seed + 1)
    untrained = DeepAlign(list(PAPER_SIZES), settings.channels, settings.depth, settings.features).eval()

    rows: dict[str, dict[str, list[float]]] = {}

    def add(method, **vals):
        for k, v in vals.items():
            rows.setdefault(method, {}).setdefault(k, []).append(v)

    for k in range(args.pairs):
        a, b = test_nets[2 * k], test_nets[2 * k + 1]
        base = identity(PAPER_SIZES)
        found = {}
        found["none"] = (base, 0.0)
        t = time.perf_counter()
        wm = weight_matching(a, b)
        found["weight matching"] = (wm.perms, time.perf_counter() - t)
        t = time.perf_counter()
        found["activation matching"] = (activation_matching(a, b, x), time.perf_counter() - t)
        t = time.perf_counter()
        found["Sinkhorn re-basin"] = (
            sinkhorn_rebasin(a, b, x, y, steps=200, seed=k),
            time.perf_counter() - t,
        )
        t = time.perf_counter()
        deep = predict(encoder, a, b)
        found["Deep-Align"] = (deep, time.perf_counter() - t)
        t = time.perf_counter()
        init = weight_matching(a, b, init=deep)
        found["Deep-Align + WM"] = (init.perms, time.perf_counter() - t + found["Deep-Align"][1])
        for method, (perms, secs) in found.items():
            losses = path_losses(a, permute(b, perms), xt, yt)
            with torch.no_grad():
                mid = float((forward(lerp(a, permute(b, perms), 0.5), xt).argmax(-1) == yt).float().mean())
            add(method, barrier=barrier(losses), mid_acc=mid, seconds=secs)
        add("weight matching", sweeps=wm.iterations, objective=wm.objective)
        add("Deep-Align + WM", sweeps=init.iterations, objective=init.objective)
        gen = torch.Generator().manual_seed(1000 + k)
        for name, aug in (("exact copy", Augment(0, 0, 0)), ("augmented copy", Augment())):
            copy, target = supervised_pair(a, PAPER_SIZES, aug, gen)
            got = predict(encoder, a, copy)
            wm_got = weight_matching(a, copy).perms
            add(
                f"recovery, {name}",
                deep=recovered(got, target),
                untrained=recovered(predict(untrained, a, copy), target),
                wm=recovered(wm_got, target),
            )

    def ms(v):
        return f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}"

    print(
        f"zoo: {args.zoo} MLPs {list(PAPER_SIZES)} ({'reused' if reused else f'{zoo_s:.0f} s to build'}), {len(train_nets)} to train on, "
        f"{args.pairs} held-out pairs; aligner: {args.steps} steps, {args.channels} channels x {args.depth} DWS layers, trained in "
        f"{train_s:.0f} s (final losses: "
        + ", ".join(f"{k} {v:.3f}" for k, v in log[-1].items() if k != "step")
        + ")\n"
    )
    print(
        "| alignment | barrier (test loss) | midpoint accuracy | seconds per pair | WM sweeps | WM objective |"
    )
    print("|---|---|---|---|---|---|")
    for method, vals in rows.items():
        if method.startswith("recovery"):
            continue
        extra = [ms(vals[k]) if k in vals else "" for k in ("sweeps", "objective")]
        print(
            f"| {method} | {ms(vals['barrier'])} | {ms(vals['mid_acc'])} | {ms(vals['seconds'])} | "
            + " | ".join(extra)
            + " |"
        )
    print(
        "\n| planted permutation of a held-out model | units recovered: Deep-Align | same encoder untrained "
        "| weight matching |"
    )
    print("|---|---|---|---|")
    for method, vals in rows.items():
        if method.startswith("recovery"):
            print(
                f"| {method.split(', ')[1]} | {ms(vals['deep'])} | {ms(vals['untrained'])} | {ms(vals['wm'])} |"
            )
    if not args.keep and args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
