"""Diagonal Fisher information: E_x E_{y ~ p(y|x)} [(d log p(y|x) / d theta)^2], per example.

Classifiers: the expectation over the model's predicted labels is exact (one gradient per label,
weighted by its probability). Causal LMs: the vocabulary is too large for that, so label sequences
are sampled from the model (``samples`` per example, an unbiased estimate of the same expectation).
Gradients are per example (never of a batch-summed loss, whose square is not the Fisher), and the
sum is accumulated in float32; the caller divides by the examples (of every process).
"""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.stats.model import Loaded, logits_and_mask


def fisher(
    loaded: Loaded, batches: Any, progress: Any, samples: int = 1, seed: int = 0
) -> tuple[dict[str, torch.Tensor], int]:
    model = loaded.model
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _n, p in named]
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    gen: torch.Generator | None = None
    n = 0

    def add(target: torch.Tensor, weight: float, retain: bool) -> None:
        grads = torch.autograd.grad(target, params, retain_graph=retain, allow_unused=True)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a.addcmul_(g.float(), g.float(), value=weight)

    for inputs, _labels, mask in batches:
        size = len(next(iter(inputs.values())))
        for b in range(size):
            one = {k: v[b : b + 1] for k, v in inputs.items()}
            logits, keep = logits_and_mask(loaded, one, None if mask is None else mask[b : b + 1])
            logp = torch.log_softmax(logits.float(), dim=-1)
            if loaded.task == "classifier":
                probs = logp.detach().exp()[0]
                classes = [c for c in range(probs.numel()) if float(probs[c]) > 1e-12]
                for i, c in enumerate(classes):
                    add(logp[0, c], float(probs[c]), retain=i < len(classes) - 1)
            else:
                if gen is None:
                    gen = torch.Generator(device=logp.device).manual_seed(seed)
                flat = logp.detach().exp().reshape(-1, logp.shape[-1])
                for s in range(samples):
                    y = torch.multinomial(flat, 1, generator=gen).view(logp.shape[:-1])
                    ll = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)[keep].sum()
                    add(ll, 1.0 / samples, retain=s < samples - 1)
            n += 1
        progress(size)
    return {name: a for (name, _p), a in zip(named, acc, strict=True)}, n  # sums over n examples
