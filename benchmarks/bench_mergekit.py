"""mergeflow and mergekit on the same mergekit configs: outputs compared tensor by tensor, both timed.

    python benchmarks/bench_mergekit.py [--sizes tiny,medium] [--only ties,slerp] [--mergekit PATH]

Each file in benchmarks/mergekit_configs is a mergekit config with placeholders for the models
({base}, {a}, {b}: a random Llama-shaped base and two seeded fine-tunes of it; {n}, {n_half}: layer
counts). The same file is given unchanged to ``mergeflow run`` and to ``mergekit-yaml``; the table
gives both wall times (process start to exit), the largest absolute difference between the outputs
and that difference relative to the largest change the merge made to the base (``rel``). Configs
marked ``# random`` draw random masks, which the two tools draw differently: they agree only in
distribution: for them the table's ``norm ratio`` (||mergeflow - base|| / ||mergekit - base||) should be
near 1, and no pass mark is given. ``yes*`` marks outputs equal except for a few entries (at most
FEW of them): where magnitudes tie at a trim threshold the two tools keep different ones of the tied
entries (mergekit by its sort order, mergeflow by storage order), as docs/mergekit.md explains.

mergekit is looked up as --mergekit, $MERGEKIT_YAML, or bench_out/mergekit-venv/bin/mergekit-yaml
(install it in a venv of its own: ``python -m venv bench_out/mergekit-venv &&
bench_out/mergekit-venv/bin/pip install torch==2.13.0 mergekit``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = HERE / "mergekit_configs"
SIZES = {  # Llama configs: tiny (toy) and medium (~30M parameters, 120 MB float32)
    "tiny": {"num_hidden_layers": 4},
    "medium": {
        "vocab_size": 4096,
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 256,
    },
}
TOLERANCE = 1e-4  # rel bound for deterministic operators (float32 compute, different summation orders)
FEW = 1e-4  # share of entries allowed to differ where magnitudes tie at a trim threshold (see docstring)


def build_models(work: Path, size: str) -> dict[str, Path]:
    from mergeflow.testing import models as toymodels

    d = work / size
    paths = {k: d / k for k in ("base", "a", "b")}
    if not all((p / "config.json").exists() for p in paths.values()):
        shutil.rmtree(d, ignore_errors=True)
        toymodels.build("llama", paths["base"], seed=0, shard_size="50MB", config=SIZES[size])
        for seed, k in ((1, "a"), (2, "b")):
            toymodels.build(
                "llama",
                paths[k],
                seed=seed,
                shard_size="50MB",
                config=SIZES[size],
                perturb_from=paths["base"],
            )
    return paths


def load(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():  # noqa: SIM118
                out[k] = h.get_tensor(k).float()
    return out


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {res.stderr.strip()[-1500:]}")
    return time.perf_counter() - t0


def compare(mf: Path, mk: Path, base: Path) -> dict[str, float]:
    """worst: max |mf - mk|; rel: that / max |mk - base|; l2: ||mf - mk|| / ||mk - base||; norms:
    ||mf - base|| / ||mk - base||; frac: share of entries differing by more than TOLERANCE * max |mk - base|;
    missing: tensors on one side only or of other shapes."""
    a, b, ref = load(mf), load(mk), load(base)
    missing = len(set(a) ^ set(b))
    worst = change = num = den = own = 0.0
    for k in set(a) & set(b) & set(ref):
        if ref[k].shape == b[k].shape:
            change = max(change, (b[k] - ref[k]).abs().max().item())
    ndiff = total = 0
    for k in set(a) & set(b):
        if a[k].shape != b[k].shape:
            missing += 1
            continue
        diff = a[k] - b[k]
        worst = max(worst, diff.abs().max().item())
        ndiff += int((diff.abs() > TOLERANCE * change).sum())
        total += diff.numel()
        num += diff.square().sum().item()
        if k in ref and ref[k].shape == b[k].shape:
            den += (b[k] - ref[k]).square().sum().item()
            own += (a[k] - ref[k]).square().sum().item()
    den = max(den, 1e-30)
    return {
        "worst": worst,
        "rel": worst / max(change, 1e-30),
        "l2": (num / den) ** 0.5,
        "norms": (own / den) ** 0.5,
        "frac": ndiff / max(total, 1),
        "missing": missing,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,medium")
    ap.add_argument("--only", default="", help="comma-separated config names")
    ap.add_argument("--mergekit", default=os.environ.get("MERGEKIT_YAML"))
    ap.add_argument("--workdir", default=str(ROOT / "bench_out" / "mergekit_compare"))
    args = ap.parse_args()
    work = Path(args.workdir)
    mk = (
        Path(args.mergekit)
        if args.mergekit
        else ROOT / "bench_out" / "mergekit-venv" / "bin" / "mergekit-yaml"
    )
    if not mk.exists():
        raise SystemExit(f"mergekit-yaml not found at {mk}; see the docstring to install it")
    mf = [sys.executable, "-m", "mergeflow.cli.main", "run", "--parents"]
    configs = sorted(CONFIGS.glob("*.yml"))
    if args.only:
        configs = [c for c in configs if c.stem in args.only.split(",")]
    rows, failed = [], []
    for size in args.sizes.split(","):
        paths = build_models(work, size)
        n = SIZES[size]["num_hidden_layers"]
        for cfg in configs:
            text = cfg.read_text()
            for key, val in {
                **{k: str(v) for k, v in paths.items()},
                "n_half": str(n // 2),
                "n": str(n),
            }.items():
                text = text.replace("{" + key + "}", val)
            random = text.lstrip().startswith("# random")
            run_cfg = work / f"{size}-{cfg.name}"
            run_cfg.write_text(text)
            out_mf, out_mk = (
                work / "out" / f"{size}-{cfg.stem}-mergeflow",
                work / "out" / f"{size}-{cfg.stem}-mergekit",
            )
            for o in (out_mf, out_mk):
                shutil.rmtree(o, ignore_errors=True)
            try:
                t_mf = timed([*mf, str(run_cfg), str(out_mf), "-q"])
                t_mk = timed([str(mk), str(run_cfg), str(out_mk), "--no-copy-tokenizer"])
            except RuntimeError as exc:
                rows.append(
                    f"| {size} | {cfg.stem} | error: {str(exc).splitlines()[-1][:90]} | | | | | | | |"
                )
                failed.append(f"{size}/{cfg.stem}")
                continue
            c = compare(out_mf, out_mk, paths["base"])
            if random:
                ok = "random"
            elif c["missing"] == 0 and c["rel"] <= TOLERANCE:
                ok = "yes"
            else:  # a few entries may differ where values tie at a threshold (documented): not more
                ok = "yes*" if c["missing"] == 0 and c["frac"] <= FEW else "NO"
            if ok == "NO":
                failed.append(f"{size}/{cfg.stem}")
            rows.append(
                f"| {size} | {cfg.stem} | {t_mf:.2f} | {t_mk:.2f} | {t_mk / t_mf:.1f}x | {c['worst']:.2e} | "
                f"{c['rel']:.1e} | {c['frac']:.1e} | {c['l2']:.1e} | {c['norms']:.3f} | {ok} |"
            )
            print(rows[-1], flush=True)
    report(
        [
            "size",
            "config",
            "mergeflow s",
            "mergekit s",
            "speed-up",
            "max abs diff",
            "rel",
            "entries differing",
            "rel L2",
            "norm ratio",
            "agree",
        ],
        rows,
        failed,
    )


def report(header: list[str], rows: list[str], failed: list[str]) -> None:
    """The table (exit 1 naming the cases that disagree or failed)."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(rows))
    if failed:
        print(f"\ndisagree or failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
