"""GPU verification, prepared to run in one call when a GPU machine is lent (issue 16, part 5):

    python benchmarks/gpu_check.py [--device cuda] [--units 14336] [--width 12288] [--out gpu_check.json]

1. FFN unit matching at a 7B model's FFN size on the device: similarity product (float32, TF32, bfloat16),
   the certified sparse solver, scipy's dense one, the sketch; units recovered; the certified permutation
   computed on the device equals the CPU's on a smaller problem.
2. Alignment of a small scrambled Llama on CPU and on the device: largest weight difference.
3. Merge operators (linear, TIES, SLERP, task arithmetic) on CPU and on the device: largest difference.
4. Gram statistics on CPU and on the device: largest relative difference.
Prints a table and writes the numbers as JSON. With --device cpu it runs the same code on the CPU (a check of
the script itself; pass smaller --units/--width).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Any) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def planted(
    n: int, width: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    anchor = (torch.randn(n, width, generator=gen) / width**0.5).to(device)
    scramble = torch.randperm(n, generator=gen)
    local = anchor[scramble.to(device)] + 0.01 * (torch.randn(n, width, generator=gen) / width**0.5).to(
        device
    )
    return local, anchor, torch.argsort(scramble).to(device)


def unit_matching(device: torch.device, units: int, width: int) -> dict[str, Any]:
    from mergeflow.align.unit_match import match_units, similarity

    local, anchor, truth = planted(units, width, device)
    out: dict[str, Any] = {"units": units, "width": width}
    parts = [(local, anchor)]
    for name, dtype, tf32 in (
        ("float32", torch.float32, False),
        ("tf32", torch.float32, True),
        ("bfloat16", torch.bfloat16, False),
    ):
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        _s, sec = timed(device, lambda dtype=dtype: similarity(parts, dtype))
        out[f"similarity_{name}_s"] = round(sec, 4)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    for solver, dtype in (
        ("sparse", torch.float32),
        ("dense", torch.float32),
        ("sketch", torch.float32),
        ("sketch", torch.bfloat16),  # the sketch product in bfloat16 (similarity: bfloat16)
    ):
        (perm, info), sec = timed(
            device, lambda solver=solver, dtype=dtype: match_units(parts, solver, 8, 512, dtype)
        )
        key = solver if dtype == torch.float32 else f"{solver}_bf16"
        out[f"{key}_s"] = round(sec, 3)
        out[f"{key}_recovered"] = float((perm == truth).float().mean())
        out[f"{key}_certified"] = info.certified
    small_l, small_a, _t = planted(3000, 512, torch.device("cpu"), seed=1)
    cpu_perm, _ = match_units([(small_l, small_a)], "sparse")
    dev_perm, _ = match_units([(small_l.to(device), small_a.to(device))], "sparse")
    out["sparse_cpu_equals_device"] = bool(torch.equal(cpu_perm, dev_perm.cpu()))
    return out


def state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def largest_difference(a: Path, b: Path) -> float:
    sa, sb = state(a), state(b)
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def end_to_end(device: torch.device, work: Path) -> dict[str, Any]:
    from mergeflow import api
    from mergeflow.testing.models import build
    from mergeflow.testing.scramble import scramble_model

    a = build("llama", work / "a", seed=0)
    b = scramble_model(a, work / "b", seed=3, heads_perm=True)
    c = build("llama", work / "c", seed=1, perturb_from=a)
    out: dict[str, Any] = {}
    runs = (("ref", "cpu"), ("dev", str(device)))  # the CPU reference, then the device
    for tag, dev in runs:
        api.align(b, a, work / f"aligned-{tag}", None, api.Options(device=dev))  # the default steps
    out["align_max_diff"] = largest_difference(work / "aligned-ref", work / "aligned-dev")
    recipes = {
        "linear": "merge: {linear: {}}",
        "task_arithmetic": "base: a\nmerge: {task_arithmetic: {weight: 0.5}}",
        "ties": "base: a\nmerge: {ties: {density: 0.5}}",
        "slerp": "base: a\nmerge: {slerp: {t: 0.3}}",
    }
    for name, body in recipes.items():
        models = (
            f"models: {{a: {a}, c: {c}}}\n" if name == "slerp" else f"models: {{a: {a}, b: {b}, c: {c}}}\n"
        )
        rec = work / f"{name}.yml"
        rec.write_text(models + body + "\ndtype: float32\n")
        for tag, dev in runs:
            api.merge(rec, work / f"{name}-{tag}", api.Options(device=dev))
        out[f"{name}_max_diff"] = largest_difference(work / f"{name}-ref", work / f"{name}-dev")
    data = work / "d.txt"
    data.write_text("the quick brown fox\njumps over the lazy dog\nhello world, merge me!\n" * 4)
    from mergeflow.stats.compute import compute_stats

    for tag, dev in runs:
        compute_stats(a, data, "gram", work / f"gram-{tag}.safetensors", torch.device(dev))
    from safetensors.torch import load_file

    refine = {
        "data": str(data),
        "steps": 5,
        "batch_size": 4,
        "perm_lr": 0.5,
        "mode": "layered",
        "candidates": 4,
    }
    steps = [
        {"permute": {"residual": True, "ffn": True}},
        {"orthogonal": {"residual": True}},
        {"refine": refine},
    ]
    for tag, dev in runs:  # the layered refinement: its losses (the matchings may part on near-ties)
        res = api.align(b, a, work / f"refined-{tag}", steps, api.Options(device=dev))
        rep = res.alignment["refine"][0]
        out[f"refine_layered_{tag}"] = [rep["loss_first"], rep["loss_last"], rep["ffn_units_moved"]]
    g1, g2 = load_file(work / "gram-ref.safetensors"), load_file(work / "gram-dev.safetensors")
    out["gram_max_rel_diff"] = max(
        float((g1[k] - g2[k]).abs().max() / g1[k].abs().max().clamp_min(1e-30)) for k in g1
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--units", type=int, default=14336)
    ap.add_argument("--width", type=int, default=12288)
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    report: dict[str, Any] = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: torch sees no CUDA device (pass --device cpu to check the script)")
        report["gpu"] = torch.cuda.get_device_name(device)
    report["unit_matching"] = unit_matching(device, args.units, args.width)
    with tempfile.TemporaryDirectory(prefix="mergeflow-gpu-check-") as tmp:
        report["cpu_vs_device"] = end_to_end(device, Path(tmp))
    text = json.dumps(report, indent=2)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
