"""Benchmark: Gram statistics of a whole Mistral-7B-shaped model (hidden 4096, 32 layers, FFN 14336, bfloat16,
14.5 GB; its Grams are about 39 GB) on this machine, weights placed by accelerate under --max-memory and the
Grams taken in as many passes over the data as the free memory requires.

    python benchmarks/bench_stats_scale.py [--layers 32] [--max-memory 8GB] [--keep]

Prints wall time, peak RSS, the passes, the statistics file's size and the machine's memory. About 54 GB of disk
at the peak (the model and the statistics file); both deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import PEAK, make_checkpoint  # noqa: E402
from bench_scale import MISTRAL  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--max-memory", default="8GB", help="mergeflow stats --max-memory (the weights' budget)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per example (8 examples)")
    ap.add_argument("--workdir", default="bench_out/stats_scale")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    import numpy as np
    import psutil

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"mistral-{args.layers}"
    built = not (model / "model.safetensors.index.json").exists()  # kept from an earlier --keep run otherwise
    make_checkpoint(model, {**MISTRAL, "num_hidden_layers": args.layers}, seed=0, shard_bytes=5_000_000_000)
    data = work / "tokens.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, MISTRAL["vocab_size"], size=(8, args.tokens)))
    out = work / "gram.safetensors"
    mem = psutil.virtual_memory()
    cmd = [str(Path(sys.executable).with_name("mergeflow")), "stats", str(model), "--data", str(data), "--kind",
           "gram", "-o", str(out), "--max-memory", args.max_memory, "--device", "cpu"]  # fmt: skip
    res = subprocess.run(
        [sys.executable, str(PEAK), *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    import json

    stats = json.loads(res.stderr.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise SystemExit(res.stderr[-3000:])
    passes = re.search(r"(\d+) passes", res.stdout)
    size = sum(f.stat().st_size for f in model.glob("*.safetensors"))
    print(
        f"machine: {os.cpu_count()} cores, {mem.total / 2**30:.1f} GiB memory ({mem.available / 2**30:.1f} GiB "
        f"available at the start); model: {args.layers} Mistral-7B layers, {size / 1e9:.1f} GB bf16"
    )
    print()
    print("| stats --kind gram | wall s | peak RSS GiB | passes | statistics file GB |")
    print("|---|---|---|---|---|")
    print(
        f"| 8 x {args.tokens} tokens, --max-memory {args.max_memory} | {stats['seconds']:.1f} | "
        f"{stats['peak_rss_bytes'] / 2**30:.2f} | {passes.group(1) if passes else 1} | "
        f"{out.stat().st_size / 1e9:.1f} |"
    )
    if not args.keep:  # only what this script wrote: --workdir may be a folder of the user's
        out.unlink()
        data.unlink()
        if built:
            shutil.rmtree(model)


if __name__ == "__main__":
    main()
