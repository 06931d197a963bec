"""Benchmark at real size: Mistral-7B-shaped layers (hidden 4096, 32 query / 8 key-value heads, FFN 14336,
vocabulary 32000, bfloat16), built offline; a pair related by a planted exact symmetry plus noise, and a third
model for a linear merge of three.

    python benchmarks/bench_scale.py [--layers 4] [--solvers sparse,sketch,dense] [--keep]

A whole Mistral-7B has 32 such layers (14.5 GB per model); ``--layers`` keeps the depth small enough for the
disk at hand (4 layers: 2.3 GB per model, about 9 GB of files in all), and the table extrapolates per-layer
costs to 32 layers. Measured side by side in one run:
  (a) reading both models once with mergeflow's reader, cold (pages evicted with posix_fadvise) and warm;
  (b) `mergeflow align` with each FFN solver: wall, solve time per step, peak RSS, distance left;
  (c) `mergeflow run` of a linear merge of the three: wall, merge time, peak RSS, bytes/s, and the same merge by
      mergekit when installed (see bench_merge.py); when the three inputs exceed the page cache (--layers 32:
      43 GB) both tools start cold and are set against the disk bound (one cold read of the inputs + the
      output at the fsync'd write rate). Merge only, at full size (about 58 GB of disk at the peak):
          python benchmarks/bench_scale.py --layers 32 --solvers ""
  (d) with --out-of-core SIZE: `stats --kind gram` and `eval barrier` (3 points) of the pair under
      --max-memory SIZE (smaller than the models' float32 weights): wall, peak RSS.
Models this run built are deleted at the end unless --keep (models kept by an earlier --keep run stay).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_align import READ_BOTH  # noqa: E402
from bench_merge import make_checkpoint, timed, warm  # noqa: E402

MISTRAL = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "vocab_size": 32000,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
FULL_LAYERS = 32


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (no root needed), so the next read comes from the disk."""
    for p in paths:
        for f in p.glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.glob("*.safetensors"))


def read_both(a: Path, b: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", READ_BOTH, str(a), str(b)], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


DEVICE = "cpu"  # --device: where mergeflow computes (a GPU machine: cuda)


def mergeflow(*args: str) -> dict:
    """A mergeflow command in a process of its own (``python -m mergeflow``: also from a source checkout on
    PYTHONPATH, as on a lent GPU machine), timed, with its peak RSS."""
    return timed([sys.executable, "-m", "mergeflow", *args, "-q", "--device", DEVICE])


def align(
    work: Path,
    a: Path,
    b: Path,
    solver: str,
    cold: bool = False,
    dtype: str = "float64",
    similarity: str = "float32",
) -> dict:
    steps = work / f"steps-{solver}.yml"
    steps.write_text(
        f"align:\n  - permute: {{ffn: true, heads: true, solver: {solver}, similarity: {similarity}}}\n"
        "  - rotate: {qk: true, vo: true}\n  - rescale: {}\n"
    )
    out = work / f"aligned-{solver}"
    evict([a, b]) if cold else warm([a, b])
    run = mergeflow(
        "align", str(b), "--anchor", str(a), "-o", str(out), "--steps", str(steps), "--force",
        "--align-dtype", dtype,
    )  # fmt: skip
    summary = json.loads((out / "alignment.json").read_text())
    shutil.rmtree(out)  # one aligned model on disk at a time
    totals = next(iter(summary["totals"].values()))
    return {
        "wall": run["seconds"],
        "rss": run["peak_rss_bytes"],
        "seconds": summary["seconds"],
        "counts": summary.get("counts", {}).get("permute", {}),
        "before": totals["before"]["total"],
        "after": list(totals.values())[-1]["total"],
    }


def write_rate(work: Path, nbytes: int = 2 << 30) -> float:
    """Bytes per second of writing a file to the benchmark's disk, flushed with fsync."""
    block = os.urandom(16 << 20)
    path = work / "write-rate.bin"
    t = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(nbytes // len(block)):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    rate = nbytes / (time.perf_counter() - t)
    path.unlink()
    return rate


def sample(out: Path, per_tensor: int = 1 << 18) -> dict:
    """Evenly strided float32 samples of every tensor of an output (to compare outputs without keeping both)."""
    from safetensors import safe_open

    got = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():  # noqa: SIM118
                t = h.get_tensor(k).flatten()
                got[k] = t[:: max(1, t.numel() // per_tensor)].float().clone()
                del t
    return got


def merge(work: Path, models: list[Path], mergekit: Path | None, cold: bool) -> dict:
    """A linear merge of ``models`` by mergeflow and (when given) mergekit, one after the other, each from a
    cold page cache when ``cold``; outputs compared on strided samples, one output on disk at a time."""
    from bench_merge import recipes

    mf_text, mk_text = recipes("linear", models)
    (work / "linear.yml").write_text(mf_text)
    (work / "linear.mergekit.yml").write_text(mk_text)
    out, report = work / "merged", work / "merge-report.json"
    evict(models) if cold else warm(models)
    run = mergeflow("run", str(work / "linear.yml"), str(out), "--force", "--report", str(report))
    rep = json.loads(report.read_text())
    res = {
        "wall": run["seconds"],
        "rss": run["peak_rss_bytes"],
        "merge": rep["seconds"],
        "written": size(out),
    }
    if mergekit is not None:
        ours = sample(out)
        shutil.rmtree(out)
        evict(models) if cold else warm(models)
        mk = timed([str(mergekit), str(work / "linear.mergekit.yml"), str(out), "--no-copy-tokenizer"])
        theirs = sample(out)
        res.update(mk_wall=mk["seconds"], mk_rss=mk["peak_rss_bytes"], mk_written=size(out))
        same = set(ours) == set(theirs)
        res["maxdiff"] = max((ours[k] - theirs[k]).abs().max().item() for k in ours) if same else float("inf")
    shutil.rmtree(out)
    return res


def mergekit_path(given: str | None) -> Path | None:
    path = Path(given) if given else HERE.parent / "bench_out" / "mergekit-venv" / "bin" / "mergekit-yaml"
    return path if path.exists() else None


def report_merge(work: Path, models: list[Path], m: dict, read_s: float | None) -> None:
    read = sum(size(p) for p in models)
    moved = read + m["written"]
    print()
    print(
        "| linear merge of three | wall s | merge s | peak RSS GiB | GB/s (read + written) / merge s | "
        "disk bound s | wall / disk bound |"
    )
    print("|---|---|---|---|---|---|---|")
    bound = None
    if read_s is not None:
        wr = write_rate(work)
        bound = read_s + m["written"] / wr
        print(
            f"disk bound = one cold read of the inputs by mergeflow's reader ({read_s:.1f} s, "
            f"{read / read_s / 1e9:.2f} GB/s) + the output at the measured fsync'd write rate ({wr / 1e9:.2f} GB/s)"
        )

    def vs_bound(wall: float) -> str:
        return f"{bound:.1f} | {wall / bound:.2f}x" if bound else "- | -"

    print(
        f"| mergeflow, {read / 1e9:.1f} GB in | {m['wall']:.1f} | {m['merge']:.1f} | {m['rss'] / 2**30:.2f} | "
        f"{moved / m['merge'] / 1e9:.2f} | {vs_bound(m['wall'])} |"
    )
    if "mk_wall" in m:
        print(
            f"| mergekit 0.1.5 | {m['mk_wall']:.1f} | - | {m['mk_rss'] / 2**30:.2f} | - | {vs_bound(m['mk_wall'])} |"
        )
        print(
            f"mergeflow / mergekit: time {m['wall'] / m['mk_wall']:.2f}x, peak RSS {m['rss'] / m['mk_rss']:.2f}x; "
            f"largest |difference| on strided samples of every tensor: {m['maxdiff']:.3g}"
        )


def out_of_core(work: Path, a: Path, b: Path, budget: str, kinds: str = "stats,barrier") -> None:
    """stats and eval barrier of models larger than ``budget`` (token-id data: the models have no tokenizer);
    ``kinds``: which of the two."""
    import numpy as np

    data = work / "tokens.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, MISTRAL["vocab_size"], size=(8, 64)))
    print()
    print(f"| under --max-memory {budget} | wall s | peak RSS GiB |")
    print("|---|---|---|")
    if "stats" in kinds:
        stats(work, a, data, budget)
    if "barrier" not in kinds:
        return
    run = mergeflow(
        "eval", "barrier", str(a), str(b), "--data", str(data), "--points", "3", "-o", str(work / "bar"),
        "--max-memory", budget, "--scratch", str(work),
    )  # fmt: skip
    rep = json.loads((work / "bar.json").read_text())["variants"]["naive"]
    print(
        f"| eval barrier, 3 points (one written, {2 * size(a) / 1e9:.1f} GB float32) | {run['seconds']:.1f} | "
        f"{run['peak_rss_bytes'] / 2**30:.2f} |"
    )
    print(f"losses along the path: {[round(p['loss'], 4) for p in rep['points']]}")


def stats(work: Path, a: Path, data: Path, budget: str) -> None:
    run = mergeflow(
        "stats", str(a), "--data", str(data), "--kind", "gram", "-o", str(work / "g.safetensors"),
        "--max-memory", budget,
    )  # fmt: skip
    print(
        f"| stats --kind gram (8 x 64 tokens) | {run['seconds']:.1f} | {run['peak_rss_bytes'] / 2**30:.2f} |"
    )
    (work / "g.safetensors").unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers per model (Mistral-7B has 32)")
    ap.add_argument("--workdir", default="bench_out/scale")
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--solvers", default="sparse,sketch,dense", help="permute solvers to time, in order")
    ap.add_argument("--no-merge", action="store_true", help="skip the linear merge of three")
    ap.add_argument("--out-of-core", metavar="SIZE", help="also run stats and eval barrier under this budget")
    ap.add_argument(
        "--out-of-core-kinds", default="stats,barrier", help="with --out-of-core: stats, barrier or both"
    )
    ap.add_argument("--keep", action="store_true", help="keep the models for another run")
    ap.add_argument(
        "--align-dtype", default="float64", help="mergeflow align --align-dtype (float64 or float32)"
    )
    ap.add_argument(
        "--similarity",
        default="float32",
        help="the permute step's similarity precision (the sketch product's, with solver sketch)",
    )
    ap.add_argument(
        "--cold",
        action="store_true",
        help="align from a cold page cache (pages evicted) instead of a warm one",
    )
    ap.add_argument(
        "--mergekit",
        default=os.environ.get("MERGEKIT_YAML"),
        help="mergekit-yaml to run the same merge with (default: bench_out/mergekit-venv/bin/mergekit-yaml if any)",
    )
    ap.add_argument("--device", default="cpu", help="where mergeflow computes: cpu, or cuda on a GPU machine")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    dims = {**MISTRAL, "num_hidden_layers": args.layers}
    a, b, c = (work / "models" / n for n in ("anchor", "scrambled", "third"))
    before = {p for p in (a, b, c) if p.exists()}  # kept by an earlier --keep run: left as they are
    make_checkpoint(a, dims, seed=0, shard_bytes=5_000_000_000)
    merge_only = not args.solvers and not args.out_of_core
    if merge_only:  # three unrelated models
        make_checkpoint(b, dims, seed=1, shard_bytes=5_000_000_000)
    elif not (b / "model.safetensors").exists():
        from mergeflow.testing.scramble import scramble_model

        scramble_model(a, b, seed=1, noise=args.noise, heads_perm=True)
    if not args.no_merge:
        make_checkpoint(c, dims, seed=2, shard_bytes=5_000_000_000)
    pair = size(a) + size(b)
    second = (
        "three unrelated random models"
        if merge_only
        else f"the second is the first with a planted exact symmetry + {args.noise:.0%} noise"
    )
    print(
        f"Mistral-7B-shaped layers x {args.layers} (hidden 4096, 32/8 heads, FFN 14336, vocab 32000, bf16): "
        f"{size(a) / 1e9:.2f} GB per model; {second}. os.cpu_count() = {os.cpu_count()}."
    )
    evict([a, b])
    cold = read_both(a, b)
    warm([a, b])
    hot = read_both(a, b)
    full_pair = 2 * 14.48e9  # bytes of a real Mistral-7B pair in bf16
    print()
    print("| reading both models once | s | GB/s | at 32 layers (29 GB pair), s |")
    print("|---|---|---|---|")
    for name, t in (("cold (evicted)", cold), ("warm (page cache)", hot)):
        print(f"| {name} | {t:.2f} | {pair / t / 1e9:.2f} | {full_pair / (pair / t):.1f} |")
    print()
    print(
        "| solver | `align` wall s | permute s | rotate s | rescale s | solves per layer s | "
        "solves at 32 layers s | vs cold read at 32 layers | peak RSS GiB | distance left / before | FFN solves certified |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for solver in [s for s in args.solvers.split(",") if s]:
        r = align(work, a, b, solver, cold=args.cold, dtype=args.align_dtype, similarity=args.similarity)
        sec = r["seconds"]
        per_layer = sum(sec.values()) / args.layers
        at_full = per_layer * FULL_LAYERS
        cold_full = full_pair / (pair / cold)
        cert = r["counts"]
        label = solver if args.similarity == "float32" else f"{solver} ({args.similarity})"
        print(
            f"| {label} | {r['wall']:.1f} | {sec.get('permute', 0):.2f} | {sec.get('rotate', 0):.2f} | "
            f"{sec.get('rescale', 0):.2f} | {per_layer:.2f} | {at_full:.0f} | {at_full / cold_full:.2f}x | "
            f"{r['rss'] / 2**30:.2f} | {r['after'] / r['before']:.2e} | "
            f"{cert.get('certified', 0):g}/{cert.get('ffn_solves', 0):g} |",
            flush=True,
        )
    if not args.no_merge:
        models = [a, b, c]
        big = 3 * size(a) > 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        read_s = None
        if big:  # inputs larger than the page cache can hold: both tools read from the disk
            evict(models)
            read_s = float(
                subprocess.run(
                    [sys.executable, "-c", READ_BOTH, *map(str, models)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
        m = merge(work, models, mergekit_path(args.mergekit), cold=big)
        report_merge(work, models, m, read_s)
    if args.out_of_core:
        out_of_core(work, a, b, args.out_of_core, args.out_of_core_kinds)
    if not args.keep:
        for p in {a, b, c} - before:  # only the models this run built
            shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
