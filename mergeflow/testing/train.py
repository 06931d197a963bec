"""Tiny models trained in seconds on data that ships with scikit-learn (the 8x8 digits), saved as
Hugging Face directories, for tests, the demo and benchmarks. Nothing is downloaded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

VIT = {
    "image_size": 16,
    "patch_size": 4,
    "num_channels": 1,
    "num_labels": 10,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
# the demo's independently trained pair: wider, and weight decay strong enough that training, not the random
# initialisation, shapes the weights (weight matching has nothing to match in init noise)
DEMO_VIT = {**VIT, "hidden_size": 64, "intermediate_size": 128}
DEMO_TRAIN: dict[str, Any] = {"epochs": 40, "weight_decay": 0.5, "config": DEMO_VIT}


TRAIN_THREADS = 2  # fixed, so that reductions split the same way on every machine


@contextlib.contextmanager
def deterministic(threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for training, restored afterwards: the same seed
    gives the same weights on machines with the same CPU instruction set, whatever their core count."""
    old = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1])


def digits(split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x [N, 1, 16, 16] in [0, 1], y [N]): scikit-learn's digits, upsampled 2x; a fixed 80/20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        from mergeflow.errors import InputError

        raise InputError(
            "the digits the demo trains on come with scikit-learn: pip install 'mergeflow[demo]'"
        ) from None

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    x = x.repeat(2, axis=1).repeat(2, axis=2)[:, None]
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    idx = order[:cut] if split == "train" else order[cut:]
    return x[idx], d.target[idx].astype(np.int64)


def save_npz(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return path


def train_vit(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    epochs: int = 10,
    init_from: str | Path | None = None,
    lr: float = 3e-3,
    config: dict | None = None,
    weight_decay: float = 0.01,
) -> Path:
    """Train a tiny ViT classifier (from ``seed``'s random init, or from ``init_from``) and save it."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with deterministic():
        return _train(path, x, y, seed, epochs, init_from, lr, config, weight_decay)


def _train(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    epochs: int,
    init_from: str | Path | None,
    lr: float,
    config: dict | None,
    weight_decay: float,
) -> Path:
    import transformers

    torch.manual_seed(seed)
    if init_from is not None:
        model = transformers.ViTForImageClassification.from_pretrained(str(init_from))
    else:
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**{**VIT, **(config or {})}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = model(pixel_values=xt[idx], labels=yt[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    model.save_pretrained(str(path))
    return Path(path)


def accuracy(path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Test accuracy of the classifier in ``path`` (through the evaluation code of `mergeflow eval`)."""
    from mergeflow.eval.loss import evaluate
    from mergeflow.stats.data import Data
    from mergeflow.stats.model import load_model

    return evaluate(load_model(path, torch.device("cpu")), Data(Path(path), x=x, labels=y))["accuracy"]
