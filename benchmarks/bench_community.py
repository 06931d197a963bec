"""mergeflow and mergekit 0.1.5 on multi-stage files, mixture-of-experts configs and tokenizer unions.

    python benchmarks/bench_community.py [--sizes tiny,medium] [--mergekit-bin DIR]

Llama-shaped models built offline (a base with a character tokenizer, two seeded fine-tunes of it, and
a third whose tokenizer orders the characters differently, lacks a few and has whole words and a
special token of its own). Each case gives the same file, unchanged, to both tools:

- ``multi``: a mergekit-multi file (linear -> SLERP -> TIES): ``mergeflow run`` vs ``mergekit-multi``
  (``yes*``: equal but for the few entries tied at TIES' trim threshold, as bench_mergekit.py explains);
- ``moe-cheap``, ``moe-hidden``: a mergekit-moe config (three experts, two per token): ``mergeflow moe`` vs
  ``mergekit-moe`` (which computes hidden states in bfloat16, mergeflow in float32: their router rows
  agree to bfloat16 precision, every other tensor exactly);
- ``union``: a linear merge with ``tokenizer: {source: union}``: the output vocabularies compared as sets
  and by the base's ids, and every token's embedding and head rows compared by token text.

Times are wall seconds of each process and peak RSS (benchmarks/_peak.py), measured side by side.
mergekit's commands are looked up in --mergekit-bin (default bench_out/mergekit-venv/bin; install with
``python -m venv bench_out/mergekit-venv && bench_out/mergekit-venv/bin/pip install torch==2.13.0
mergekit==0.1.5``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_mergekit import FEW, SIZES, compare, load, report  # noqa: E402

PROMPTS = [
    ["hello, how are you?", "tell me a story."],
    ["two plus two is four.", "add them, then divide."],
    ["define a function that returns x.", "print the list."],
]


def build(work: Path, size: str) -> dict[str, Path]:
    from mergeflow.testing import models as toymodels

    d = work / size
    p = {k: d / k for k in ("base", "a", "b", "c")}
    if not all((x / "config.json").exists() for x in p.values()):
        shutil.rmtree(d, ignore_errors=True)
        cfg = SIZES[size]
        toymodels.build("llama", p["base"], seed=0, shard_size="50MB", config=cfg)
        for seed, k in ((1, "a"), (2, "b")):
            toymodels.build("llama", p[k], seed=seed, shard_size="50MB", config=cfg, perturb_from=p["base"])
        toymodels.build(
            "llama", p["c"], seed=3, shard_size="50MB", config=cfg, perturb_from=p["base"], tokenizer=False
        )
        toymodels.save_tokenizer(
            p["c"],
            chars=[ch for ch in reversed(toymodels.CHARS) if ch not in "xyz"],
            words=("hello", "world"),
            special=("<|im_start|>",),
        )
    return p


def configs(p: dict[str, Path], work: Path) -> dict[str, tuple[str, str]]:
    """case -> (file text, tool kind)."""
    multi = f"""name: first
merge_method: linear
models: [{{model: {p["a"]}}}, {{model: {p["b"]}}}]
parameters: {{weight: 0.5}}
dtype: float32
---
name: second
merge_method: slerp
base_model: first
models: [{{model: first}}, {{model: {p["base"]}}}]
parameters: {{t: [0.2, 0.8]}}
dtype: float32
---
merge_method: ties
base_model: {p["base"]}
models:
  - {{model: second, parameters: {{density: 0.6, weight: 0.5}}}}
  - {{model: {p["b"]}, parameters: {{density: 0.8, weight: 0.5}}}}
dtype: float32
"""
    experts = "".join(
        f"  - source_model: {p[k]}\n    positive_prompts: {json.dumps(PROMPTS[i])}\n"
        for i, k in enumerate(("base", "a", "b"))
    )
    moe = f"base_model: {p['base']}\ndtype: float32\nexperts_per_token: 2\nexperts:\n{experts}"
    # base_model named: without it mergekit starts the union from whichever model it lists first (it varies)
    union = (
        f"merge_method: linear\nbase_model: {p['base']}\nmodels: [{{model: {p['base']}}}, {{model: {p['a']}}}, {{model: {p['c']}}}]\n"
        "parameters: {weight: 1.0}\ndtype: float32\ntokenizer: {source: union}\n"
    )
    return {
        "multi": (multi, "multi"),
        "moe-cheap": ("gate_mode: cheap_embed\n" + moe, "moe"),
        "moe-hidden": ("gate_mode: hidden\n" + moe, "moe"),
        "union": (union, "yaml"),
    }


def measured(cmd: list[str]) -> tuple[float, int]:
    res = subprocess.run(
        [sys.executable, str(HERE / "_peak.py"), *cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    stats = json.loads(res.stderr.strip().splitlines()[-1])
    if stats["rc"] != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {res.stderr.strip()[-1500:]}")
    return stats["seconds"], stats["peak_rss_bytes"]


def fused(t: dict) -> dict:
    """Mixtral's per-expert tensors (what mergeflow writes: the layout every loader reads) in transformers 5's
    fused layout (what mergekit 0.1.5 writes under transformers 5), to compare the two outputs."""
    import re

    import torch

    out, experts = {}, {}
    for k, v in t.items():
        m = re.match(r"(.*\.layers\.\d+\.)block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$", k)
        if m:
            experts.setdefault(m[1], {})[(int(m[2]), m[3])] = v
        else:
            out[k.replace("block_sparse_moe.gate.", "mlp.gate.")] = v
    for pre, w in experts.items():
        n = 1 + max(e for e, _ in w)
        out[pre + "mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([w[(e, "w1")], w[(e, "w3")]]) for e in range(n)]
        )
        out[pre + "mlp.experts.down_proj"] = torch.stack([w[(e, "w2")] for e in range(n)])
    return out


def union_rows(mf: Path, mk: Path, base: Path) -> tuple[str, float]:
    from transformers import AutoTokenizer

    vf, vk = (
        AutoTokenizer.from_pretrained(str(mf)).get_vocab(),
        AutoTokenizer.from_pretrained(str(mk)).get_vocab(),
    )
    vb = AutoTokenizer.from_pretrained(str(base)).get_vocab()
    if any(vf[t] != i or vk[t] != i for t, i in vb.items()):
        return "the base's ids moved", float("inf")
    a, b = load(mf), load(mk)
    worst = 0.0
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        for tok in set(vf) & set(vk):
            worst = max(worst, (a[name][vf[tok]] - b[name][vk[tok]]).abs().max().item())
    same = "same" if set(vf) == set(vk) else f"differ ({len(set(vf) ^ set(vk))} tokens)"
    return f"vocabularies {same}, {len(vf)} tokens", worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="tiny,medium")
    ap.add_argument("--mergekit-bin", default=str(ROOT / "bench_out" / "mergekit-venv" / "bin"))
    ap.add_argument("--workdir", default=str(ROOT / "bench_out" / "community"))
    args = ap.parse_args()
    work, mkbin = Path(args.workdir), Path(args.mergekit_bin)
    mf = [sys.executable, "-m", "mergeflow.cli.main"]
    rows, failed = [], []
    for size in args.sizes.split(","):
        p = build(work, size)
        for case, (text, kind) in configs(p, work).items():
            cfg = work / f"{size}-{case}.yml"
            cfg.write_text(text)
            o_mf, o_mk = work / "out" / f"{size}-{case}-mf", work / "out" / f"{size}-{case}-mk"
            for o in (o_mf, o_mk, Path(f"{o_mf}.stages"), work / "out" / f"{size}-{case}-mk-stages"):
                shutil.rmtree(o, ignore_errors=True)
            if kind == "multi":
                cmd_mf = [*mf, "run", str(cfg), str(o_mf), "-q", "--parents"]
                cmd_mk = [
                    str(mkbin / "mergekit-multi"),
                    str(cfg),
                    "--intermediate-dir",
                    str(work / "out" / f"{size}-{case}-mk-stages"),
                    "--out-path",
                    str(o_mk),
                ]
            elif kind == "moe":
                cmd_mf = [*mf, "moe", str(cfg), str(o_mf), "-q", "--parents"]
                cmd_mk = [str(mkbin / "mergekit-moe"), str(cfg), str(o_mk), "--device", "cpu"]
            else:
                cmd_mf = [*mf, "run", str(cfg), str(o_mf), "-q", "--parents"]
                cmd_mk = [str(mkbin / "mergekit-yaml"), str(cfg), str(o_mk)]
            try:
                t_mf, m_mf = measured(cmd_mf)
                t_mk, m_mk = measured(cmd_mk)
            except RuntimeError as exc:
                rows.append(f"| {size} | {case} | error: {str(exc).splitlines()[-1][:100]} | | | | | |")
                failed.append(f"{size}/{case}")
                continue
            if kind == "yaml":
                what, worst = union_rows(o_mf, o_mk, p["base"])
                ok = worst <= 1e-5 and "same" in what
            else:
                a, b = fused(load(o_mf)), fused(load(o_mk))
                router = [k for k in a if k.endswith("mlp.gate.weight")]
                missing = len(set(a) ^ set(b)) + sum(a[k].shape != b[k].shape for k in set(a) & set(b))
                worst_r = max(((a[k] - b[k]).abs().max().item() for k in router if k in b), default=0.0)
                other = max(
                    (
                        (a[k] - b[k]).abs().max().item()
                        for k in a
                        if k in b and k not in router and a[k].shape == b[k].shape
                    ),
                    default=0.0,
                )
                worst = max(worst_r, other)
                what = f"{len(a)} tensors, {missing} missing" + (
                    f"; router rows max diff {worst_r:.1e}" if router else ""
                )
                ok = (
                    missing == 0
                    and other <= 1e-5
                    and (case != "moe-cheap" or worst_r <= 1e-5)
                    and worst_r < 2e-2
                )
                if kind == "multi" and not ok:  # TIES: entries tied at the trim threshold (docs/mergekit.md)
                    c = compare(o_mf, o_mk, p["base"])
                    ok = "yes*" if c["missing"] == 0 and c["frac"] <= FEW else False
                    what += f"; {c['frac']:.1e} of entries differ"
            rows.append(
                f"| {size} | {case} | {t_mf:.2f} | {t_mk:.2f} | {m_mf / 2**20:.0f} | {m_mk / 2**20:.0f} | "
                f"{worst:.1e} | {what} | {ok if isinstance(ok, str) else 'yes' if ok else 'NO'} |"
            )
            print(rows[-1], flush=True)
            if not ok:
                failed.append(f"{size}/{case}")
    report(
        [
            "size",
            "case",
            "mergeflow s",
            "mergekit s",
            "mergeflow peak MiB",
            "mergekit peak MiB",
            "max abs diff",
            "what",
            "agree",
        ],
        rows,
        failed,
    )


if __name__ == "__main__":
    main()
