"""refine's two memory modes side by side: peak RSS, time per step and loss, on a Llama-shaped pair built offline.

    python benchmarks/bench_refine.py [--hidden 1024] [--ffn 2816] [--layers 8] [--vocab 8000] [--steps 4]
                                      [--modes whole,layered] [--candidates 16] [--device cpu] [--workdir DIR]

Each mode runs as `mergeflow align` (permute + orthogonal weight matching, then refine) in a process of its own,
timed with its peak RSS (the weight matching before refine in --align-dtype, float32 by default: at these sizes
float64 matching on two cores takes minutes per layer); the planner's estimate of each mode's need is printed beside it, so the estimate can
be checked against what the process really held. Data: random token ids (the models are random). The work
folder (new or empty) is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import timed  # noqa: E402


def build_pair(work: Path, cfg: dict) -> tuple[Path, Path]:
    from mergeflow.testing.models import build

    return tuple(  # type: ignore[return-value]
        build("llama", work / name, seed=seed, shard_size="2GB", tokenizer=False, config=cfg)
        for seed, name in ((1, "anchor"), (2, "model"))
    )


def estimates(anchor: Path, cfg: dict, params: dict) -> dict[str, int]:
    """The planner's need of each mode (mergeflow.align.refine_step), from the anchor's tensor sizes."""
    from mergeflow.align.refine_step import RefineParams, layered_bytes, whole_bytes
    from mergeflow.io.reader import ModelReader

    reader = ModelReader("anchor", anchor)
    numel = sum(t.numel for t in reader.tensors.values())
    layer = sum(t.numel for n, t in reader.tensors.items() if n.startswith("model.layers.0."))
    f, n = cfg["intermediate_size"], cfg["num_hidden_layers"]
    p = RefineParams(**params)
    return {
        "whole": whole_bytes(numel, f, n, p),
        "layered": layered_bytes(numel, layer, numel - n * layer, f, n, p),
        "params": numel,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--modes", default="whole,layered")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--align-dtype", default="float32", help="of the weight matching before refine")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    import numpy as np

    if args.workdir and Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        raise SystemExit(f"{args.workdir}: not empty; give a new or empty folder (it is deleted at the end)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-refine-"))
    work.mkdir(parents=True, exist_ok=True)
    heads = max(1, args.hidden // 128)
    cfg = {
        "hidden_size": args.hidden,
        "intermediate_size": args.ffn,
        "num_hidden_layers": args.layers,
        "vocab_size": args.vocab,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
    }
    try:
        anchor, model = build_pair(work, cfg)
        data = work / "tokens.npz"
        np.savez(data, x=np.random.default_rng(0).integers(0, args.vocab, size=(64, args.tokens)))
        params = {
            "data": str(data),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "candidates": args.candidates,
        }
        need = estimates(anchor, cfg, params)
        print(
            f"Llama-shaped pair: hidden {args.hidden}, FFN {args.ffn}, {args.layers} layers, vocabulary "
            f"{args.vocab}: {need['params'] / 1e6:.0f} M parameters; refine {args.steps} steps of "
            f"{args.batch_size} x {args.tokens} tokens on {args.device}; the planner's estimates: whole mode "
            f"{need['whole'] / 2**30:.2f} GiB, layered {need['layered'] / 2**30:.2f} GiB"
        )
        print()
        print(
            "| mode | planner's estimate GiB | peak RSS GiB | wall s | refine s | s / step | loss first -> last |"
        )
        print("|---|---|---|---|---|---|---|")
        for mode in args.modes.split(","):
            steps = work / f"steps-{mode}.yml"
            refine = json.dumps({**params, "mode": mode})
            steps.write_text(
                "align:\n  - permute: {residual: true, ffn: true, heads: true}\n"
                f"  - orthogonal: {{residual: true}}\n  - refine: {refine}\n"
            )
            out = work / f"out-{mode}"
            run = timed(
                [sys.executable, "-m", "mergeflow", "align", str(model), "--anchor", str(anchor), "-o", str(out),
                 "--steps", str(steps), "--force", "-q", "--device", args.device, "--max-memory", "1TB",
                 "--align-dtype", args.align_dtype]
            )  # fmt: skip
            rep = json.loads((out / "alignment.json").read_text())["refine"][0]
            shutil.rmtree(out)
            print(
                f"| {mode} | {need[mode] / 2**30:.2f} | {run['peak_rss_bytes'] / 2**30:.2f} | {run['seconds']:.1f} "
                f"| {rep['seconds']:.1f} | {rep['seconds'] / rep['steps']:.2f} | "
                f"{rep['loss_first']:.4f} -> {rep['loss_last']:.4f} |"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
