"""How a mixture of experts built by ``mergeflow moe`` routes text that resembles each expert's prompts.

    python benchmarks/bench_moe_routing.py

A random Llama-shaped base (character tokenizer) and four seeded fine-tunes of it as experts, each
with its own positive prompts (runs of one letter, punctuation, a word). For each gate mode the table
gives, for a probe resembling expert k's prompts, the share of (layer, token) pairs whose first
choice is each expert (the model run by transformers' MixtralForCausalLM with router logits).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPTS = {
    0: ["aaaa aaaa aaaa", "aa aaa aaaa"],
    1: ["zzzz zzzz zzz", "zz zzzz zz"],
    2: ["?!?! ?!?! ?!", "!!?? ?!"],
    3: ["hello hello", "hell oh hello"],
}
PROBES = {0: "aaa aaaa aaa aaaa", 1: "zzz zzzz zz zzzz", 2: "?!?!! ?!?", 3: "hello hell hello"}


def shares(out: Path, text: str) -> list[float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    with torch.no_grad():
        res = model(
            **tok(tok.bos_token + text, return_tensors="pt", add_special_tokens=False),
            output_router_logits=True,
        )
    top = torch.cat([r.reshape(-1, r.shape[-1]).argmax(-1) for r in res.router_logits])
    return (torch.bincount(top, minlength=4).float() / top.numel()).tolist()


def main() -> None:
    from mergeflow.cli.main import main as mergeflow
    from mergeflow.testing.models import build

    work = Path(tempfile.mkdtemp(prefix="moe-routing-"))
    base = build("llama", work / "base", seed=0)
    experts = [
        build("llama", work / f"e{i}", seed=i + 1, perturb_from=base, perturb_scale=0.05) for i in range(4)
    ]
    print("| gate mode | probe like expert | share routed to experts 0/1/2/3 | to its expert |")
    print("|---|---|---|---|")
    for mode in ("hidden", "hidden_avg", "cheap_embed"):
        lines = [f"base_model: {base}", f"gate_mode: {mode}", "dtype: float32", "experts:"]
        for i, e in enumerate(experts):
            lines += [f"  - source_model: {e}", f"    positive_prompts: {json.dumps(PROMPTS[i])}"]
        cfg = work / f"{mode}.yml"
        cfg.write_text("\n".join(lines) + "\n")
        out = work / f"out-{mode}"
        try:
            mergeflow(["moe", str(cfg), str(out), "-q"])
        except SystemExit as exc:
            if exc.code:
                raise
        for k, probe in PROBES.items():
            s = shares(out, probe)
            print(f"| {mode} | {k} ({probe!r}) | {' / '.join(f'{x:.2f}' for x in s)} | {s[k]:.2f} |")


if __name__ == "__main__":
    main()
