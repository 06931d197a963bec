"""Loss (and accuracy for classifiers) of a model on a held-out set: classifiers cross-entropy per
example, causal LMs next-token cross-entropy per token (padding excluded)."""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.stats.data import Data, batches
from mergeflow.stats.model import Loaded, logits_and_mask


def evaluate(loaded: Loaded, data: Data, batch_size: int = 64, max_length: int = 128) -> dict[str, float]:
    dev = next(loaded.model.parameters()).device
    total = correct = count = 0.0
    with torch.no_grad():
        for inputs, labels, mask in batches(data, loaded.tokenizer, batch_size, max_length, dev, loaded.image_shape):
            logits, keep = logits_and_mask(loaded, inputs, mask)
            logits = logits.float()
            if loaded.task == "classifier":
                if labels is None:
                    raise ValueError("classifier evaluation needs labels (JSONL 'label' or .npz 'y')")
                total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += float((logits.argmax(-1) == labels).sum())
                count += len(labels)
            else:
                target = inputs["input_ids"][:, 1:]
                ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
                total += float(ce[keep].sum())
                count += float(keep.sum())
    out = {"loss": total / max(count, 1)}
    if loaded.task == "classifier":
        out["accuracy"] = correct / max(count, 1)
    return out


def interpolate_into(loaded: Loaded, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float) -> None:
    """Load (1 - lam) A + lam B into ``loaded.model`` (integer buffers from A)."""
    state = {k: (torch.lerp(v, b[k], lam) if v.is_floating_point() else v) for k, v in a.items()}
    loaded.model.load_state_dict(state)


def state_of(loaded: Loaded) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
