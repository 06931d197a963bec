"""Benchmark: mergeflow (and mergekit, when installed beside it) on Llama-shaped random bf16 checkpoints.

    python benchmarks/bench_merge.py [--params 0.5e9] [--models 3] [--ops linear,ties,slerp,dare_ties]

Generates the checkpoints once under --workdir (reused by later runs), then runs every merge with
each tool in the same run, alternating, --repeat times, page cache warm for both, and prints the
fastest wall time of each (process start to exit), peak RSS, mergeflow's own merge time and
throughput ((bytes read + bytes written) / merge time) and the mergeflow/mergekit ratios. mergekit is looked up as
--mergekit, $MERGEKIT_YAML, or bench_out/mergekit-venv/bin/mergekit-yaml; install it in a venv of its
own so its pins do not touch ours:

    python -m venv bench_out/mergekit-venv
    bench_out/mergekit-venv/bin/pip install torch==2.13.0 mergekit
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEAK = HERE / "_peak.py"


def llama_dims(params: float) -> dict:
    """Llama-style dims with about ``params`` parameters (hidden 1024-2048, vocab 32000)."""
    hidden = 1024 if params < 1e9 else 2048
    inter = int(hidden * 2.75) // 256 * 256
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    vocab = 32000
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    return {
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": hidden // 64,
    }


def make_checkpoint(path: Path, dims: dict, seed: int, shard_bytes: int = 500_000_000) -> None:
    """A random Llama-shaped bfloat16 checkpoint with config ``dims`` (kept when already built)."""
    import torch

    from mergeflow.testing.checkpoints import llama_shapes, write_checkpoint

    if (path / "model.safetensors.index.json").exists():
        return
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        **dims,
    }
    write_checkpoint(
        path, llama_shapes(dims), seed, torch.bfloat16, 0.02, shard_bytes=shard_bytes, config=cfg
    )


def recipes(op: str, models: list[Path]) -> tuple[str, str]:
    """(mergeflow recipe, mergekit config) for the same merge: float32 compute, bfloat16 output."""
    names = [f"m{i}" for i in range(len(models))]
    if op == "slerp":
        models, names = models[:2], names[:2]
    mf = ["models:"] + [f"  {n}: {p}" for n, p in zip(names, models, strict=True)]
    mk = ["models:"]
    if op == "linear":
        mf += ["merge: {linear: {weight: 1.0}}"]
        mk += [f"  - model: {p}\n    parameters: {{weight: 1.0}}" for p in models] + ["merge_method: linear"]
    elif op == "ties":
        mf += ["base: m0", "merge: {ties: {density: 0.5, weight: 1.0}}"]
        mk += [f"  - model: {models[0]}"] + [
            f"  - model: {p}\n    parameters: {{density: 0.5, weight: 1.0}}" for p in models[1:]
        ]
        mk += [f"base_model: {models[0]}", "merge_method: ties", "parameters: {normalize: true}"]
    elif op == "dare_ties":  # seeded in mergeflow, unseeded in mergekit: the same method, other masks
        mf += ["base: m0", "merge: {dare_ties: {density: 0.5, weight: 1.0}}"]
        mk += [f"  - model: {models[0]}"] + [
            f"  - model: {p}\n    parameters: {{density: 0.5, weight: 1.0}}" for p in models[1:]
        ]
        mk += [f"base_model: {models[0]}", "merge_method: dare_ties", "parameters: {normalize: true}"]
    elif op == "task_arithmetic":
        mf += ["base: m0", "merge: {task_arithmetic: {weight: 0.5}}"]
        mk += [f"  - model: {models[0]}"] + [
            f"  - model: {p}\n    parameters: {{weight: 0.5}}" for p in models[1:]
        ]
        mk += [f"base_model: {models[0]}", "merge_method: task_arithmetic"]
    elif op == "slerp":
        mf += ["base: m0", "merge: {slerp: {t: 0.5}}"]
        mk += [f"  - model: {p}" for p in models] + [
            f"base_model: {models[0]}",
            "merge_method: slerp",
            "parameters: {t: 0.5}",
        ]
    mf += ["dtype: float32", "out_dtype: bfloat16", "output: {shard_size: 5GB}"]
    mk += ["dtype: float32", "out_dtype: bfloat16"]
    return "\n".join(mf) + "\n", "\n".join(mk) + "\n"


def timed(cmd: list[str], env: dict | None = None) -> dict:
    res = subprocess.run(
        [sys.executable, str(PEAK), *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    stats = json.loads(res.stderr.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return stats


def compare(a: Path, b: Path) -> float:
    """Largest |difference| between two output directories' tensors."""
    from safetensors import safe_open

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})  # noqa: SIM118
        return out

    ta, tb = tensors(a), tensors(b)
    if set(ta) != set(tb):
        return math.inf
    worst = 0.0
    for k in ta:
        with safe_open(str(ta[k]), "pt") as ha, safe_open(str(tb[k]), "pt") as hb:
            worst = max(worst, (ha.get_tensor(k).float() - hb.get_tensor(k).float()).abs().max().item())
    return worst


def warm(paths: list[Path]) -> None:
    for p in paths:
        for f in p.glob("*.safetensors"):
            with open(f, "rb") as fh:
                while fh.read(1 << 24):
                    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=0.5e9, help="parameters per model (default 0.5e9, ~1 GB)")
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--ops", default="linear,task_arithmetic,ties,slerp")
    ap.add_argument("--workdir", default="bench_out")
    ap.add_argument("--mergekit", default=os.environ.get("MERGEKIT_YAML"))
    ap.add_argument("--max-memory", default=None, help="mergeflow --max-memory (default: its own default)")
    ap.add_argument(
        "--repeat", type=int, default=2, help="runs of each tool per merge, alternating; the fastest counts"
    )
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    mk = Path(args.mergekit) if args.mergekit else work / "mergekit-venv" / "bin" / "mergekit-yaml"
    have_mk = mk.exists()
    dims = llama_dims(args.params)
    tag = f"{args.params / 1e9:g}B"
    models = [work / "models" / f"llama-{tag}-{i}" for i in range(args.models)]
    for i, m in enumerate(models):
        make_checkpoint(m, dims, seed=i)
    size = sum(f.stat().st_size for f in models[0].glob("*.safetensors"))
    print(
        f"{args.models} Llama-shaped models, {dims['num_hidden_layers']} layers, hidden {dims['hidden_size']}, "
        f"{size / 1e9:.2f} GB each (bf16); mergekit: {mk if have_mk else 'not installed'}"
    )
    rows = []
    for op in args.ops.split(","):
        mf_text, mk_text = recipes(op, models)
        (work / f"{op}.mergeflow.yml").write_text(mf_text)
        (work / f"{op}.mergekit.yml").write_text(mk_text)
        out_mf, out_mk = work / "out" / f"{op}-mergeflow", work / "out" / f"{op}-mergekit"
        used = models[:2] if op == "slerp" else models
        cmd = [
            str(Path(sys.executable).with_name("mergeflow")),
            "run",
            str(work / f"{op}.mergeflow.yml"),
            str(out_mf),
            "--force",
            "--parents",
            "-q",
            "--device",
            "cpu",
            "--report",
            str(work / f"{op}.report.json"),
        ]
        if args.max_memory:
            cmd += ["--max-memory", args.max_memory]
        best_mf = best_mk = None
        for _ in range(args.repeat):
            warm(used)
            mf = timed(cmd)
            mf["merge_s"] = json.loads((work / f"{op}.report.json").read_text())["seconds"]
            best_mf = mf if best_mf is None or mf["seconds"] < best_mf["seconds"] else best_mf
            if have_mk:
                shutil.rmtree(out_mk, ignore_errors=True)
                warm(used)
                kk = timed([str(mk), str(work / f"{op}.mergekit.yml"), str(out_mk), "--no-copy-tokenizer"])
                best_mk = kk if best_mk is None or kk["seconds"] < best_mk["seconds"] else best_mk
        report = json.loads((work / f"{op}.report.json").read_text())
        moved = report["bytes_read"] + report["bytes_written"]
        row = {
            "op": op,
            "mf_s": best_mf["seconds"],
            "mf_merge_s": best_mf["merge_s"],
            "mf_rss": best_mf["peak_rss_bytes"],
            "mf_gbs": moved / best_mf["merge_s"] / 1e9,
        }
        if have_mk:
            row.update(
                {
                    "mk_s": best_mk["seconds"],
                    "mk_rss": best_mk["peak_rss_bytes"],
                    "maxdiff": compare(out_mf, out_mk),
                }
            )
        rows.append(row)
        print(json.dumps(row))
    print()
    head = "| merge | mergeflow s (merge only) | mergeflow peak RSS | mergeflow GB/s (merge only) |"
    head += " mergekit s | mergekit peak RSS | time ratio | RSS ratio | max abs diff |" if have_mk else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['op']} | {r['mf_s']:.2f} ({r['mf_merge_s']:.2f}) | {r['mf_rss'] / 2**30:.2f} GiB |"
            f" {r['mf_gbs']:.2f} |"
        )
        if have_mk:
            line += (
                f" {r['mk_s']:.2f} | {r['mk_rss'] / 2**30:.2f} GiB | {r['mf_s'] / r['mk_s']:.2f}x |"
                f" {r['mf_rss'] / r['mk_rss']:.2f}x | {r['maxdiff']:.3g} |"
            )
        print(line)


if __name__ == "__main__":
    main()
