"""Contracts every registered operator must meet; a new operator is covered by adding it to the registry."""

import pytest
import torch

from mergeflow.merge.base import MergeContext
from mergeflow.merge.catalog import OPERATORS


def stats_for(op, tensors, dtype):
    """Synthetic statistics for operators that take them: positive Fishers, SPD Gram matrices."""
    gen = torch.Generator().manual_seed(9)
    if op.stats == "fisher":
        return tuple(torch.rand(t.shape, generator=gen).to(dtype) + 0.1 for t in tensors)
    if op.stats == "gram":
        if tensors[0].dim() != 2:
            pytest.skip("Gram statistics exist for 2-D weights only (others take the fallback operator)")
        n = tensors[0].shape[1]
        out = []
        for _ in tensors:
            x = torch.randn(4 * n, n, generator=gen)
            out.append((x.T @ x / (4 * n)).to(dtype))
        return tuple(out)
    return ()


def run(name, tensors, base, dtype=torch.float32, model_params=None):
    op = OPERATORS[name]
    names = [f"m{i}" for i in range(len(tensors))]
    if op.select is not None:
        names = op.select(op.params(), names)
        tensors = tensors[: len(names)]
    return op.fn(
        [t.to(dtype).clone() for t in tensors],
        None if base is None else base.to(dtype),
        op.params(),
        model_params or [op.model_params() for _ in tensors],
        MergeContext("x", 0, tuple(names), 0, stats_for(op, tensors, dtype)),
    )


def n_models(op):
    return min(max(op.min_models, 3), op.max_models or 3)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4), ()])
def test_copies_merge_to_the_model(name, shape):
    op = OPERATORS[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    base = x.clone() if op.needs_base else None
    out = run(name, [x] * n_models(op), base)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_bfloat16_gives_finite_values_and_keeps_dtype(name):
    op = OPERATORS[name]
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(64, 32, generator=gen) * 10 for _ in range(n_models(op))]
    base = torch.randn(64, 32, generator=gen) if op.needs_base else None
    out = run(name, xs, base, torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.shape == (64, 32)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", list(OPERATORS))
def test_base_is_never_modified(name):
    op = OPERATORS[name]
    if not op.needs_base:
        pytest.skip("no base")
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(16, generator=gen)
    keep = base.clone()
    run(name, [torch.randn(16, generator=gen) for _ in range(n_models(op))], base)
    assert torch.equal(base, keep)


@pytest.mark.parametrize("name", list(OPERATORS))
def test_documented(name):
    op = OPERATORS[name]
    assert op.summary and op.summary != name
    for cls in (op.params, op.model_params):
        for fname, f in cls.model_fields.items():
            assert f.description, f"{name}.{fname} has no description"


@pytest.mark.parametrize(
    "name", [n for n, op in OPERATORS.items() if "weight" in op.model_params.model_fields]
)
def test_weight_one_on_one_model_returns_it(name):
    op = OPERATORS[name]
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(33, generator=gen) for _ in range(n_models(op))]
    base = torch.randn(33, generator=gen) if op.needs_base else None
    mp = [op.model_params(weight=1.0 if i == 0 else 0.0) for i in range(len(xs))]
    out = run(name, xs, base, model_params=mp)
    torch.testing.assert_close(out, xs[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("shape", [(0,), (0, 4), (3, 0)])
def test_zero_size_tensors_merge_to_an_empty_tensor_of_their_shape(name, shape):
    op = OPERATORS[name]
    x = torch.zeros(shape)
    out = run(name, [x] * n_models(op), x.clone() if op.needs_base else None)
    assert out.shape == x.shape and out.dtype == x.dtype
