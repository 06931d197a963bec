"""Loss (and accuracy for classifiers) of a model on a held-out set: classifiers cross-entropy per
example, causal LMs next-token cross-entropy per token (padding excluded), token classifiers
cross-entropy per labelled word (its first sub-token) with token accuracy and entity F1. Under a launcher
(several processes, see ``stats.parallel``) each process scores a contiguous block of the examples and the
sums are added up: the same numbers as one process."""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.eval.tokens import entity_f1, is_bio
from mergeflow.stats.data import Data, batches
from mergeflow.stats.model import Loaded, logits_and_mask, max_length_for
from mergeflow.stats.parallel import Group


def evaluate(
    loaded: Loaded,
    data: Data,
    batch_size: int = 64,
    max_length: int | None = None,
    group: Group | None = None,
) -> dict[str, float]:
    """``group``: the processes sharing the examples (None: this one scores them all)."""
    dev = loaded.input_device
    total = correct = count = 0.0
    gold: list[list[int]] = []
    pred: list[list[int]] = []
    max_length = max_length_for(loaded, data, max_length)  # from every example, the same in every process
    first = 0  # masked LMs: example i's positions drawn from seed i, whoever scores it, in whatever batch
    if group is not None and group.size > 1:
        first, data = len(data) * group.index // group.size, data.part(group.index, group.size)
    with torch.no_grad():
        for inputs, labels, mask in batches(
            data, loaded.tokenizer, batch_size, max_length, dev, loaded.image_shape
        ):
            if loaded.task == "masked-lm":
                inputs, labels = mask_tokens(loaded, inputs, mask, first, max_length)
                first += len(inputs["input_ids"])
            logits, keep = logits_and_mask(loaded, inputs, mask)
            logits = logits.float()
            if loaded.task in ("token-classifier", "masked-lm"):
                if labels is None:
                    raise ValueError(
                        "token classifier evaluation needs per-word tags (JSONL 'tokens' and 'tags')"
                    )
                on = labels != -100  # labelled words' first sub-tokens, or the masked tokens
                total += float(torch.nn.functional.cross_entropy(logits[on], labels[on], reduction="sum"))
                best = logits.argmax(-1)
                correct += float((best == labels)[on].sum())
                count += float(on.sum())
                if loaded.task == "token-classifier":
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
                assert keep is not None  # causal LMs always have a mask of the positions scored
                total += float(ce[keep].sum())
                count += float(keep.sum())
    if group is not None and group.size > 1:
        sums = group.sum(
            {"s": torch.tensor([total, correct, count], dtype=torch.float64, device=group.device)}
        )
        total, correct, count = (float(v) for v in sums["s"])
        if loaded.task == "token-classifier":  # in example order: the blocks are contiguous, in process order
            gold, pred = (sum(part, []) for part in zip(*group.gather((gold, pred)), strict=True))
    out = {"loss": total / max(count, 1)}
    if loaded.task in ("classifier", "token-classifier", "masked-lm"):
        out["accuracy"] = correct / max(count, 1)
    if loaded.task == "token-classifier":
        names = {int(k): str(v) for k, v in (getattr(loaded.model.config, "id2label", None) or {}).items()}
        if names and is_bio(names):
            out.update(entity_f1(gold, pred, names))
    return out


def mask_tokens(
    loaded: Loaded,
    inputs: dict[str, torch.Tensor],
    mask: torch.Tensor | None,
    first: int,
    max_length: int,
    rate: float = 0.15,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """BERT's masked-LM test: ``rate`` of the real, non-special tokens replaced by the mask token, to be
    predicted (labels -100 elsewhere); at least one per example. The batch's examples are ``first``,
    ``first + 1``, ...: each draws its positions from its own seed, so every model scored, and every split of
    the examples between processes, masks the same tokens."""
    tok = loaded.tokenizer
    if tok is None or tok.mask_token_id is None:
        raise ValueError("masked LM evaluation needs a tokenizer with a mask token")
    ids = inputs["input_ids"]
    real = (mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)).cpu()
    for special in tok.all_special_ids:
        real &= ids.cpu() != special
    draws = [
        torch.rand(max(max_length, ids.shape[1]), generator=torch.Generator().manual_seed(first + b))
        for b in range(len(ids))
    ]
    pick = (torch.stack(draws)[:, : ids.shape[1]] < rate) & real
    one = real.float().argmax(1)  # a real token of each example, so that none is left unscored
    pick[torch.arange(len(ids)), one] |= real[torch.arange(len(ids)), one]
    pick = pick.to(ids.device)
    labels = torch.where(pick, ids, torch.full_like(ids, -100))
    return {**inputs, "input_ids": torch.where(pick, torch.full_like(ids, tok.mask_token_id), ids)}, labels


def interpolate_into(
    loaded: Loaded, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lam: float
) -> None:
    """Load (1 - lam) A + lam B into ``loaded.model`` (integer buffers from A)."""
    state = {k: (torch.lerp(v, b[k], lam) if v.is_floating_point() else v) for k, v in a.items()}
    loaded.model.load_state_dict(state)


def state_of(loaded: Loaded) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
