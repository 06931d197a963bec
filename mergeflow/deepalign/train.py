"""Training Deep-Align: batches of supervised pairs (a zoo network vs. its augmented, permuted copy:
cross-entropy of the soft permutation at the known one, plus reconstruction) and unsupervised pairs (two zoo
networks: reconstruction, plus the task loss at a random point of the path between A and the softly aligned
B, the LMC loss). Every step's pairs are drawn from a generator seeded by (seed, step), and the model and
optimiser state are checkpointed, so a resumed run continues exactly where the killed one stopped."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from mergeflow.align.permute import assignment
from mergeflow.deepalign.encoder import DeepAlign, as_batch, similarities, sinkhorn
from mergeflow.deepalign.mlp import Weights, forward, lerp, soft_permute
from mergeflow.deepalign.pairs import Augment, supervised_pair
from mergeflow.progress import SILENT, Progress


@dataclass(frozen=True)
class Settings:
    steps: int = 2000
    batch: int = 8  # pairs per step: half supervised, half two zoo networks
    lr: float = 1e-3
    supervised: float = 1.0  # weights of the three losses
    reconstruction: float = 1.0
    lmc: float = 1.0
    channels: int = 32
    depth: int = 4
    features: int = 64
    seed: int = 0
    save_every: int = 100
    augment: Augment = field(default_factory=Augment)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def relative_distance(a: Weights, b: Weights) -> torch.Tensor:
    num = sum(
        ((wa - wb) ** 2).sum() + ((ba - bb) ** 2).sum() for (wa, ba), (wb, bb) in zip(a, b, strict=True)
    )
    den = sum((wa**2).sum() + (ba**2).sum() for wa, ba in a)
    return torch.as_tensor(num / den)


def predict(encoder: DeepAlign, a: Weights, b: Weights) -> list[torch.Tensor]:
    """Permutations that align ``b`` to ``a`` (``permute(b, perms)`` sits near ``a``): one forward pass and
    one linear assignment per hidden layer; no data."""
    encoder.eval()
    with torch.no_grad():
        scores = similarities(encoder, as_batch([a]), as_batch([b]))
    return [assignment(s[0].T.double()) for s in scores]


def _losses(
    encoder: DeepAlign,
    zoo: Sequence[Weights],
    data: tuple[torch.Tensor, torch.Tensor],
    s: Settings,
    gen: torch.Generator,
    activation: str,
) -> dict[str, torch.Tensor]:
    half = max(1, s.batch // 2)
    pick = torch.randint(len(zoo), (half,), generator=gen).tolist()
    anchors = [zoo[i] for i in pick]
    made = [supervised_pair(a, encoder.sizes, s.augment, gen, activation == "relu") for a in anchors]
    others = []
    for i in pick:  # a different zoo network for each unsupervised pair
        j = int(torch.randint(len(zoo) - 1, (), generator=gen))
        others.append(zoo[j + (j >= i)])
    out: dict[str, torch.Tensor] = {}
    logs = [
        sinkhorn(m)
        for m in similarities(encoder, as_batch(anchors * 2), as_batch([b for b, _ in made] + others))
    ]
    ce = [F.nll_loss(logs[j][k], made[k][1][j]) for k in range(half) for j in range(len(logs))]
    out["supervised"] = torch.stack(ce).mean()
    recon, lmc = [], []
    x, y = data
    for k, (a, b) in enumerate(zip(anchors * 2, [b for b, _ in made] + others, strict=True)):
        aligned = soft_permute(b, [lg[k].exp() for lg in logs])
        recon.append(relative_distance(a, aligned))
        if k >= half:
            rows = torch.randint(len(x), (min(len(x), 128),), generator=gen)
            t = float(torch.rand((), generator=gen))
            lmc.append(F.cross_entropy(forward(lerp(a, aligned, t), x[rows], activation), y[rows]))
    out["reconstruction"] = torch.stack(recon).mean()
    out["lmc"] = torch.stack(lmc).mean()
    return out


def train(
    zoo: Sequence[Weights],
    data: tuple[torch.Tensor, torch.Tensor],
    settings: Settings,
    workdir: Path,
    activation: str = "relu",
    progress: Progress = SILENT,
    stop_after: int | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[DeepAlign, list[dict[str, float]]]:
    """Train (or resume from ``workdir/checkpoint.pt``) an aligner for the zoo's shapes; the per-step log.
    ``stop_after``: return after that many steps in all (tests)."""
    if len(zoo) < 2:
        raise ValueError("a zoo of at least two networks is needed")
    sizes = [zoo[0][0][0].shape[1]] + [w.shape[0] for w, _ in zoo[0]]
    torch.manual_seed(settings.seed)
    encoder = DeepAlign(sizes, settings.channels, settings.depth, settings.features)
    opt = torch.optim.Adam(encoder.parameters(), lr=settings.lr)
    ckpt = workdir / "checkpoint.pt"
    step, log = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state["settings"] != settings.as_dict() or state["sizes"] != sizes:
            raise ValueError(f"{ckpt} was made with other settings or shapes; start a new output")
        encoder.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, log = state["step"], state["log"]
    end = settings.steps if stop_after is None else min(settings.steps, stop_after)
    bar = progress.bar("learn-aligner", total=settings.steps, unit="step")
    bar.update(step)
    encoder.train()
    while step < end:
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        losses = _losses(encoder, zoo, data, settings, gen, activation)
        total = (
            settings.supervised * losses["supervised"]
            + settings.reconstruction * losses["reconstruction"]
            + settings.lmc * losses["lmc"]
        )
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), 10.0)
        opt.step()
        step += 1
        entry = {"step": step, **{k: float(v.detach()) for k, v in losses.items()}}
        log.append(entry)
        bar.update(1)
        bar.postfix(f"sup {entry['supervised']:.3f} rec {entry['reconstruction']:.3f} lmc {entry['lmc']:.3f}")
        if on_step is not None:
            on_step(step, entry)
        if step % settings.save_every == 0 or step == end:
            _save(ckpt, encoder, opt, step, log, settings, sizes)
    bar.close()
    encoder.eval()
    return encoder, log


def _save(
    path: Path,
    encoder: DeepAlign,
    opt: Any,
    step: int,
    log: list[dict[str, float]],
    s: Settings,
    sizes: list[int],
) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "model": encoder.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "log": log,
            "settings": s.as_dict(),
            "sizes": sizes,
        },
        tmp,
    )
    os.replace(tmp, path)
