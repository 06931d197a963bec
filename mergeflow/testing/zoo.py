"""A model zoo for Deep-Align: small MLP classifiers on scikit-learn's 8x8 digits (64 inputs, 10 classes),
each trained from its own seed, saved as ``mlp`` checkpoints (``mergeflow.deepalign.mlp``). Nothing is
downloaded; a 64-128-128-128-10 network trains in well under a second on a CPU."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from mergeflow.deepalign.mlp import MLPSpec, Weights, forward, save_mlp
from mergeflow.progress import SILENT, Progress
from mergeflow.testing.train import deterministic, digits

PAPER_SIZES = (64, 128, 128, 128, 10)  # the paper's MNIST MLPs, scaled to the 8x8 digits


def digits_flat(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, 64] in [0, 1], y [N]): the digits at their own 8x8 resolution, flattened."""
    x, y = digits(split)
    return torch.from_numpy(x[:, 0, ::2, ::2].reshape(len(x), 64).copy()), torch.from_numpy(y).long()


def spec_for(sizes: Sequence[int]) -> MLPSpec:
    """nn.Sequential(Linear, ReLU, Linear, ...) names: the Linear layers are modules 0, 2, 4, ..."""
    return MLPSpec(tuple(str(2 * i) for i in range(len(sizes) - 1)), tuple(sizes), "relu")


def train_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: Sequence[int] = PAPER_SIZES,
    seed: int = 0,
    epochs: int = 20,
    lr: float = 3e-3,
    batch: int = 64,
) -> Weights:
    """A ReLU MLP trained with Adam from the seed's initialisation (PyTorch's default Linear init)."""
    with deterministic():
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        net = torch.nn.Sequential(*layers)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for k in range(0, len(x), batch):
                idx = order[k : k + batch]
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        linear = [m for m in net if isinstance(m, torch.nn.Linear)]
        return [(m.weight.detach().clone(), m.bias.detach().clone()) for m in linear]


def accuracy(weights: Weights, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((forward(weights, x).argmax(-1) == y).float().mean())


def build_zoo(
    folder: Path,
    count: int,
    sizes: Sequence[int] = PAPER_SIZES,
    epochs: int = 20,
    first_seed: int = 0,
    progress: Progress = SILENT,
) -> list[Path]:
    """``count`` trained MLPs as ``folder/mlp-SEED`` (those already there are kept: a rebuild resumes)."""
    x, y = digits_flat("train")
    spec = spec_for(sizes)
    folder.mkdir(parents=True, exist_ok=True)
    bar = progress.bar("zoo", total=count, unit="model")
    out = []
    for seed in range(first_seed, first_seed + count):
        path = folder / f"mlp-{seed:04d}"
        if not (path / "config.json").exists():  # built in a fresh hidden folder, renamed when complete
            tmp = Path(tempfile.mkdtemp(prefix=f".mlp-{seed:04d}-", dir=folder)) / "model"
            save_mlp(tmp, spec, train_mlp(x, y, sizes, seed, epochs))
            tmp.rename(path)
            tmp.parent.rmdir()
        out.append(path)
        bar.update(1)
    bar.close()
    return out
