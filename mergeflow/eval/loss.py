"""Loss (and accuracy for classifiers) of a model on a held-out set: classifiers cross-entropy per
example, causal LMs next-token cross-entropy per token (padding excluded), token classifiers
cross-entropy per labelled word (its first sub-token) with token accuracy and entity F1."""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.eval.tokens import entity_f1, is_bio
from mergeflow.stats.data import Data, batches
from mergeflow.stats.model import Loaded, logits_and_mask, max_length_for


def evaluate(loaded: Loaded, data: Data, batch_size: int = 64, max_length: int | None = None) -> dict[str, float]:
    dev = next(loaded.model.parameters()).device
    total = correct = count = 0.0
    gold: list[list[int]] = []
    pred: list[list[int]] = []
    if loaded.task == "masked-lm":
        raise ValueError("evaluation of masked LMs is not supported (no labels to score them on)")
    max_length = max_length_for(loaded, data, max_length)
    with torch.no_grad():
        for inputs, labels, mask in batches(data, loaded.tokenizer, batch_size, max_length, dev, loaded.image_shape):
            logits, keep = logits_and_mask(loaded, inputs, mask)
            logits = logits.float()
            if loaded.task == "token-classifier":
                if labels is None:
                    raise ValueError("token classifier evaluation needs per-word tags (JSONL 'tokens' and 'tags')")
                on = labels != -100
                total += float(torch.nn.functional.cross_entropy(logits[on], labels[on], reduction="sum"))
                hits = logits.argmax(-1) == labels
                correct += float(hits[on].sum())
                count += float(on.sum())
                best = logits.argmax(-1)
                for b in range(len(labels)):
                    gold.append(labels[b][on[b]].tolist())
                    pred.append(best[b][on[b]].tolist())
            elif loaded.task == "classifier":
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
    if loaded.task in ("classifier", "token-classifier"):
        out["accuracy"] = correct / max(count, 1)
    if loaded.task == "token-classifier":
        names = {int(k): str(v) for k, v in (getattr(loaded.model.config, "id2label", None) or {}).items()}
        if names and is_bio(names):
            out.update(entity_f1(gold, pred, names))
    return out


def interpolate_into(loaded: Loaded, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float) -> None:
    """Load (1 - lam) A + lam B into ``loaded.model`` (integer buffers from A)."""
    state = {k: (torch.lerp(v, b[k], lam) if v.is_floating_point() else v) for k, v in a.items()}
    loaded.model.load_state_dict(state)


def state_of(loaded: Loaded) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
