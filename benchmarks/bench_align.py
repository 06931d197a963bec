"""Benchmark: align a Llama-shaped model to another (random bf16 weights; the second is a copy of the first
with a random exact symmetry applied and 1% noise added), and compare with reading both models once.

    python benchmarks/bench_align.py [--params 1e9]

Prints the solve time of each step, the whole `mergeflow align` run (wall, peak RSS), the time to read
both models once (same reader, page cache warm), and the distance to the anchor before and after each step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_merge import llama_dims, make_checkpoint, timed, warm  # noqa: E402

READ_BOTH = """
import sys, time
from mergeflow.io.reader import ModelReader
t = time.perf_counter()
n = 0
for i, path in enumerate(sys.argv[1:]):
    r = ModelReader(str(i), path)
    for name in r.tensors:
        n += r.read(name).numel()
print(time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1e9)
    ap.add_argument("--workdir", default="bench_out")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--similarity", default="float32", help="permute's similarity precision")
    ap.add_argument("--solver", default="sparse", help="permute's FFN solver: sparse, dense or sketch")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    dims = llama_dims(args.params)
    dims["num_key_value_heads"] = max(1, dims["num_attention_heads"] // 4)  # grouped-query attention
    tag = f"{args.params / 1e9:g}B"
    a = work / "models" / f"llama-{tag}-gqa-anchor"
    b = work / "models" / f"llama-{tag}-gqa-scrambled"
    make_checkpoint(a, dims, seed=0)
    if not (b / "model.safetensors").exists():
        from mergeflow.testing.scramble import scramble_model

        scramble_model(a, b, seed=1, noise=args.noise, heads_perm=True)
    size = sum(f.stat().st_size for f in a.glob("*.safetensors"))
    print(
        f"Llama-shaped pair: {dims['num_hidden_layers']} layers, hidden {dims['hidden_size']}, "
        f"{dims['num_attention_heads']} query / {dims['num_key_value_heads']} key-value heads, FFN "
        f"{dims['intermediate_size']}, {size / 1e9:.2f} GB each (bf16); the second is a scrambled copy + "
        f"{args.noise:.0%} noise; permute similarity in {args.similarity}, solver {args.solver}"
    )
    warm([a, b])
    read = subprocess.run(
        [sys.executable, "-c", READ_BOTH, str(a), str(b)], capture_output=True, text=True, check=True
    )
    read_s = float(read.stdout.strip())
    steps = work / "align-steps.yml"
    steps.write_text(
        f"align:\n  - permute: {{ffn: true, heads: true, similarity: {args.similarity}, solver: {args.solver}}}\n"
        "  - rotate: {qk: true, vo: true}\n  - rescale: {}\n"
    )
    out, report = work / "out" / f"aligned-{tag}", work / "align.report.json"
    warm([a, b])
    run = timed(
        [
            str(Path(sys.executable).with_name("mergeflow")),
            "align",
            str(b),
            "--anchor",
            str(a),
            "-o",
            str(out),
            "--steps",
            str(steps),
            "--force",
            "--parents",
            "-q",
            "--device",
            "cpu",
            "--report",
            str(report),
        ]
    )
    rep = json.loads(report.read_text())
    summary = json.loads((out / "alignment.json").read_text())
    solve = sum(summary["seconds"].values())
    print()
    print("| step | solve time (s) | squared distance after | vs before |")
    print("|---|---|---|---|")
    totals = next(iter(summary["totals"].values()))
    before = totals["before"]["total"]
    print(f"| before | - | {before:.4g} | 1.0000 |")
    for stage, d in totals.items():
        if stage != "before":
            print(
                f"| {stage} | {summary['seconds'][stage]:.2f} | {d['total']:.4g} | {d['total'] / before:.2e} |"
            )
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| all solves (sum of steps) | {solve:.2f} s |")
    print(f"| `mergeflow align` wall, process start to exit | {run['seconds']:.2f} s |")
    print(f"| `mergeflow align` own time (read, solve, write) | {rep['seconds']:.2f} s |")
    print(f"| reading both models once (same reader, warm cache) | {read_s:.2f} s |")
    print(f"| solves / reading both once | {solve / read_s:.2f}x |")
    print(
        f"| peak RSS | {run['peak_rss_bytes'] / 2**30:.2f} GiB (memory budget {rep['max_memory_bytes'] / 2**30:.1f} GiB) |"
    )


if __name__ == "__main__":
    main()
