"""The sample-bracketed k-th largest (TIES/DARE-family trims on the CPU): exact for every k and layout, the
bracket taken on ordinary data (only a few percent of the entries selected among), everything selected when the
sample misleads it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mergeflow.merge import select


def reference(v: torch.Tensor, k: int) -> float:
    return float(np.partition(v.numpy(), v.numel() - k)[v.numel() - k])


def layouts(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return {
        "gaussian magnitudes": torch.randn(n, generator=gen).abs(),
        "bfloat16 deltas": (torch.randn(n, generator=gen).bfloat16().float() * 1e-3).bfloat16().float().abs(),
        "sorted": torch.linspace(0, 1, n),
        "reversed": torch.linspace(1, 0, n),
        "periodic (the sample sees one value)": torch.arange(n, dtype=torch.float32).remainder(
            float(n // select.SAMPLE)
        ),
        "few values": torch.randint(0, 5, (n,), generator=gen).float(),
        "negative and positive": torch.randn(n, generator=gen),
    }


@pytest.mark.parametrize("name", list(layouts(8)))
def test_exact_for_every_k(name):
    n = 3 * select.SMALL + 17
    v = layouts(n)[name]
    for k in (1, 2, 33, n // 100, n // 3, n // 2, n - n // 10, n - 1, n):
        assert select.kth_largest_cpu(v, k).item() == reference(v, k), (name, k)


@pytest.fixture
def sizes(monkeypatch) -> list[int]:
    """How many entries each selection ran over."""
    seen: list[int] = []
    real = select.select_all

    def spy(values, k):
        seen.append(values.numel())
        return real(values, k)

    monkeypatch.setattr(select, "select_all", spy)
    return seen


def test_the_bracket_selects_among_a_few_percent(sizes):
    n = 4 * select.SMALL
    v = layouts(n)["gaussian magnitudes"]
    for k in (1, n // 2, n - 1):
        assert select.kth_largest_cpu(v, k).item() == reference(v, k)
    assert len(sizes) == 3 and max(sizes) < 0.05 * n  # no selection over everything


def test_a_misleading_sample_or_nan_falls_back_to_everything(sizes):
    n = 2 * select.SMALL
    v = layouts(n)["periodic (the sample sees one value)"]
    assert select.kth_largest_cpu(v, n // 2).item() == reference(v, n // 2)
    assert sizes[-1] == n
    w = torch.rand(n)
    w[::7] = float("nan")
    got = select.kth_largest_cpu(w, n // 3)
    assert got.isnan().item() == np.isnan(reference(w, n // 3)) and (
        got.isnan().item() or got.item() == reference(w, n // 3)
    )
