"""Issue 18's last part: does a learned FFN unit encoder help transformer FFN matching?

    python benchmarks/bench_ffn_learned.py [--dims 32,64,128] [--steps 400] [--gpt2-width 256]

The only place a learned encoder can pay in mergeflow's FFN matching is the candidate stage of the sketch
solver: an FFN's weight matching is one exact assignment per layer (no descent for a learned start to
shorten), and the certified sparse solver needs the whole similarity anyway. So the learned encoder is set
against the other ways to pick each unit's candidate partners from a cheap e-dimensional embedding of its
features (up/gate rows, bias, down column):

- ``sketch``: the count sketch mergeflow uses (``solver: sketch``), e dimensions, nothing learned;
- ``pca``: projection of both layers' units on the top e principal directions of the anchor layer's unit
  features (uncentred, so inner products in the dominant subspace are kept; a randomised SVD,
  ``torch.svd_lowrank`` with 2 power iterations, timed with the matching), nothing learned;
- ``learned``: a permutation-equivariant set encoder over units (each layer h_i -> act(h_i A + mean_j h_j B);
  input: a 512-dimensional count sketch of the features, so one encoder fits any hidden size), trained
  self-supervised on the anchor's own FFN layers only: each step takes a batch of units, a randomly permuted
  copy with noise (relative size drawn in [0.1, 3]) and 10% of the features dropped, and minimises the
  two-sided cross-entropy of the embeddings' inner products against the known permutation (one Sinkhorn-like
  normalisation per side, as the paper's training; Hungarian, here the sparse assignment, at inference).

Each embedding gives k candidates per unit (both ways, plus the identity), the candidates' exact scores and the
sparse assignment (``mergeflow.align.assign``); reported: objective / optimum (the dense solver's), the share of
the optimum's pairs among the candidates, planted units recovered, seconds (embedding + candidates + solve;
training separately). Cases: synthetic random features shaped like the 1.8 GB benchmark pair's FFN (5632 units,
3 x 2048 features; random weights, as that pair has) with a planted permutation and noise, and the FFNs of two
GPT-2 character models trained here from different seeds (trained weights; `--gpt2-width`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mergeflow.align import assign
from mergeflow.align.unit_match import count_sketch, edge_scores

SKETCH_IN = 512


class UnitEncoder(nn.Module):
    """Permutation-equivariant over the rows (units): h_i -> act(h_i A + mean_j h_j B + c), then a linear map
    of the same form to the embedding."""

    def __init__(self, width: int, hidden: int, out: int) -> None:
        super().__init__()
        self.a1, self.b1 = nn.Linear(width, hidden), nn.Linear(width, hidden, bias=False)
        self.a2, self.b2 = nn.Linear(hidden, out), nn.Linear(hidden, out, bias=False)
        self.scale = nn.Parameter(torch.tensor(10.0).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a1(x) + self.b1(x.mean(0, keepdim=True)))
        return self.a2(h) + self.b2(h.mean(0, keepdim=True))


def sketch_in(x: torch.Tensor) -> torch.Tensor:
    """The encoder's input: unit features scaled to unit mean row norm, count-sketched to SKETCH_IN dims."""
    return count_sketch(x, SKETCH_IN) / x.norm(dim=1).mean()


def train_encoder(
    layers: list[torch.Tensor], dims: int, steps: int, seed: int = 0
) -> tuple[UnitEncoder, float]:
    """An encoder trained on one model's FFN unit features (one (n, width) matrix per layer); (it, seconds)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    enc = UnitEncoder(SKETCH_IN, 256, dims)
    opt = torch.optim.Adam(enc.parameters(), lr=2e-3)
    start = time.perf_counter()
    for step in range(steps):
        x = layers[step % len(layers)]
        idx = torch.randperm(x.shape[0], generator=gen)[: min(1024, x.shape[0])]
        a = x[idx]
        perm = torch.randperm(len(idx), generator=gen)
        rel = 0.1 + 2.9 * torch.rand((), generator=gen)
        b = (
            a[perm]
            + rel
            * a.norm(dim=1, keepdim=True)[perm]
            * torch.randn(a.shape, generator=gen)
            / a.shape[1] ** 0.5
        )
        b = b * (torch.rand(b.shape, generator=gen) > 0.1)
        ea, eb = enc(sketch_in(a)), enc(sketch_in(b))
        logits = enc.scale.exp() * (ea @ eb.T) / dims**0.5
        target = torch.argsort(perm)  # a's unit i is b's unit target[i]
        loss = nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, perm)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return enc.eval(), time.perf_counter() - start


def embedders(anchor_layers: list[torch.Tensor], dims: int, steps: int) -> dict:
    """name -> (function (local, anchor) -> their (n, dims) embeddings, training seconds)."""

    def sketch(local: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return count_sketch(local, dims), count_sketch(anchor, dims)

    def pca(local: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        basis = torch.svd_lowrank(anchor, q=dims, niter=2)[2]  # this layer's anchor: no training
        return local @ basis, anchor @ basis

    enc, sec = train_encoder(anchor_layers, dims, steps)

    def learned(local: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return enc(sketch_in(local)), enc(sketch_in(anchor))

    return {"sketch": (sketch, 0.0), "pca": (pca, 0.0), "learned": (learned, sec)}


def match(
    local: torch.Tensor, anchor: torch.Tensor, embed, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """perm from the embedding's candidates and their exact scores; (perm, candidate rows, candidate cols)."""
    n = local.shape[0]
    el, ea = embed(local, anchor)
    rows, cols = assign.candidates(
        ((i, el[i : i + assign.BLOCK] @ ea.T) for i in range(0, n, assign.BLOCK)), n, k
    )
    w = edge_scores([(local, anchor)], rows, cols)
    return assign.solve_edges(rows, cols, w, n), rows, cols


def evaluate(
    label: str,
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    dims: list[int],
    steps: int,
    k: int,
) -> None:
    """pairs: per layer (local, anchor, planted truth or None). Prints one table row per (embedder, dims)."""
    optimum = []
    for local, anchor, _ in pairs:
        score = local.double() @ anchor.double().T
        perm = assign.dense(score)
        optimum.append((score, perm))
    for d in dims:
        for name, (embed, train_s) in embedders([a for _, a, _ in pairs], d, steps).items():
            obj = best = found = total = rec = planted = 0.0
            start = time.perf_counter()
            for (local, anchor, truth), (score, opt) in zip(pairs, optimum, strict=True):
                n = local.shape[0]
                perm, rows, cols = match(local, anchor, embed, k)
                cols_ = np.arange(n)
                obj += float(score[torch.as_tensor(perm), cols_].sum())
                best += float(score[opt, cols_].sum())
                edges = set(zip(rows.tolist(), cols.tolist(), strict=True))
                found += sum((int(opt[c]), c) in edges for c in range(n))
                total += n
                if truth is not None:
                    rec += float((torch.as_tensor(perm) == truth).sum())
                    planted += n
            sec = time.perf_counter() - start
            recovered = f"{rec / planted:.1%}" if planted else "-"
            print(
                f"| {label} | {name} | {d} | {obj / best:.4f} | {found / total:.1%} | {recovered} | {sec:.2f} | "
                f"{train_s:.1f} |",
                flush=True,
            )


def synthetic(n: int, width: int, noise: float, layers: int) -> list:
    out = []
    for seed in range(layers):
        gen = torch.Generator().manual_seed(seed)
        anchor = torch.randn(n, width, generator=gen) / width**0.5
        scramble = torch.randperm(n, generator=gen)
        local = anchor[scramble] + noise * torch.randn(n, width, generator=gen) / width**0.5
        out.append((local, anchor, torch.argsort(scramble)))
    return out


def gpt2_units(path: Path) -> list[torch.Tensor]:
    """Per layer, a GPT-2's FFN unit features: c_fc column (up row), bias, c_proj row (down column)."""
    from safetensors.torch import load_file

    sd = load_file(str(path / "model.safetensors"))
    out, i = [], 0
    while f"transformer.h.{i}.mlp.c_fc.weight" in sd:
        p = f"transformer.h.{i}.mlp."
        out.append(
            torch.cat([sd[p + "c_fc.weight"].T, sd[p + "c_fc.bias"][:, None], sd[p + "c_proj.weight"]], 1)
        )
        i += 1
    return [x.float() for x in out]


def gpt2_pair(work: Path, width: int) -> list:
    import bench_lmc

    bench_lmc.GPT2.update(n_embd=width, n_head=max(4, width // 64), n_layer=4)
    text = bench_lmc.corpus(["argparse", "json.decoder", "textwrap"])
    models = []
    for seed in (11, 12):
        path = work / f"gpt2-{width}-{seed}"
        if not (path / "model.safetensors").exists():
            bench_lmc.train_gpt2(path, text, seed=seed, steps=300)
        models.append(gpt2_units(path))
    return [(local, anchor, None) for local, anchor in zip(models[1], models[0], strict=True)]


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="32,64,128", help="embedding dimensions to compare")
    ap.add_argument("--steps", type=int, default=400, help="training steps of the learned encoder")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--units", type=int, default=5632)
    ap.add_argument("--width", type=int, default=3 * 2048)
    ap.add_argument("--layers", type=int, default=2, help="synthetic layers (the encoder trains on them all)")
    ap.add_argument("--gpt2-width", type=int, default=256, help="0: skip the trained GPT-2 pair")
    ap.add_argument("--workdir", default="bench_out/ffn_learned")
    args = ap.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    torch.manual_seed(0)
    print(f"{torch.get_num_threads()} threads, {args.candidates} candidates per unit each way")
    print()
    print(
        "| case | embedding | dims | objective / optimum | optimum's pairs among candidates | planted recovered | "
        "seconds (all layers) | training s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for noise in (0.5, 2.0):
        label = f"random {args.units} x {args.width}, planted + {noise:g}x noise"
        evaluate(
            label, synthetic(args.units, args.width, noise, args.layers), dims, args.steps, args.candidates
        )
    if args.gpt2_width:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
        pairs = gpt2_pair(work, args.gpt2_width)
        label = f"GPT-2 chars, 4 layers x {pairs[0][0].shape[0]} units, seeds 11/12"
        evaluate(label, pairs, [d for d in dims if d < pairs[0][0].shape[1]], args.steps, args.candidates)


if __name__ == "__main__":
    main()
