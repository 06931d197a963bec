"""Token classification scores: token accuracy, and entity-level F1 over labelled spans (BIO or BIOES
label names, as conlleval counts them: a predicted entity counts only when its type and both ends
match a gold one)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def is_bio(names: Mapping[int, str]) -> bool:
    """Whether label names look like B-TYPE / I-TYPE / O (BIO or BIOES)."""
    tags = [str(n) for n in names.values()]
    return any(t == "O" for t in tags) and all(
        t == "O" or (len(t) > 2 and t[1] == "-" and t[0] in "BIES") for t in tags
    )


def spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """(start, end inclusive, type) of every entity in one sequence of label names."""
    out: set[tuple[int, int, str]] = set()
    start, typ = None, None
    for i, tag in enumerate([*tags, "O"]):
        kind, _, ty = (tag[0], "", tag[2:]) if len(tag) > 2 and tag[1] == "-" else ("O", "", "")
        ends = typ is not None and (kind in ("O", "B", "S") or ty != typ)
        if ends:
            out.add((start, i - 1, typ))  # type: ignore[arg-type]
            start, typ = None, None
        if kind in ("B", "S") or (kind in ("I", "E") and typ is None):
            start, typ = i, ty
        if kind in ("E", "S") and typ is not None:
            out.add((start, i, typ))  # type: ignore[arg-type]
            start, typ = None, None
    return out


def entity_f1(gold: Sequence[Sequence[int]], pred: Sequence[Sequence[int]], names: Mapping[int, str]) -> dict:
    """Precision, recall and F1 over entities, micro-averaged over all sequences and types."""
    tp = n_pred = n_gold = 0
    for g, p in zip(gold, pred, strict=True):
        gs, ps = spans([names[i] for i in g]), spans([names[i] for i in p])
        tp += len(gs & ps)
        n_pred += len(ps)
        n_gold += len(gs)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1, "entities": n_gold}
