"""Closed-form tests, one block per operator."""

import math

import pytest
import torch
from torch.testing import assert_close

from mergeflow.merge.base import MergeContext
from mergeflow.merge.catalog import OPERATORS


def call(name, tensors, base=None, params=None, model_params=None, tensor="t", seed=0, names=None):
    op = OPERATORS[name]
    p = op.params.model_validate(params or {})
    n = len(tensors)
    mp = [op.model_params.model_validate((model_params or [{}] * n)[i]) for i in range(n)]
    ctx = MergeContext(tensor, seed, tuple(names or [f"m{i}" for i in range(n)]))
    return op.fn([t.clone() for t in tensors], base, p, mp, ctx)


a = torch.tensor([1.0, -2.0, 3.0, 0.5])
b = torch.tensor([3.0, 2.0, -1.0, 0.5])
c = torch.tensor([-1.0, 4.0, 1.0, 2.5])


def test_linear():
    assert_close(call("linear", [a, b], model_params=[{"weight": 1}, {"weight": 3}]), (a + 3 * b) / 4)
    assert_close(
        call("linear", [a, b], params={"normalize": False}, model_params=[{"weight": 1}, {"weight": 3}]),
        a + 3 * b,
    )
    with pytest.raises(ValueError, match="sum to 0"):
        call("linear", [a, b], model_params=[{"weight": 1}, {"weight": -1}])


def test_task_arithmetic():
    base = torch.tensor([0.5, 0.5, 0.5, 0.5])
    got = call("task_arithmetic", [a, b], base, {"lambda": 0.5}, [{"weight": 1.0}, {"weight": 2.0}])
    assert_close(got, base + 0.5 * ((a - base) + 2 * (b - base)))
    got = call("task_arithmetic", [a, b], base, {"normalize": True}, [{"weight": 1.0}, {"weight": 3.0}])
    assert_close(got, base + ((a - base) + 3 * (b - base)) / 4)


def test_ties_by_hand():
    base = torch.zeros(4)
    d1 = torch.tensor([4.0, -1.0, 0.2, 3.0])
    d2 = torch.tensor([-2.0, -3.0, 0.1, 0.0])
    d3 = torch.tensor([-1.0, 2.0, -5.0, 1.0])
    # density 0.5 keeps the 2 largest |entries| of each: d1 -> [4,0,0,3], d2 -> [-2,-3,0,0], d3 -> [0,2,-5,0]
    # elected sign of the sum [2,-1,-5,3] -> [+,-,-,+]; agreeing entries: e0 {4}, e1 {-3}, e2 {-5}, e3 {3}
    got = call("ties", [d1, d2, d3], base, {}, [{"density": 0.5}] * 3)
    assert_close(got, torch.tensor([4.0, -3.0, -5.0, 3.0]))
    # without normalize: plain sum of agreeing entries; with lambda
    got = call("ties", [d1, d2, d3], base, {"normalize": False, "lambda": 2.0}, [{"density": 1.0}] * 3)
    # sum [1,-2,-4.7,4] -> signs [+,-,-,+]: e0 {4} -> 4, e1 {-1,-3} -> -4, e2 {-5} -> -5, e3 {3,1} -> 4
    assert_close(got, 2.0 * torch.tensor([4.0, -4.0, -5.0, 4.0]))
    # disjoint mean at density 1: e0 4/1, e1 (-1-3)/2, e2 -5/1, e3 (3+0+1)/3 (0 has sign 0: not agreeing) -> 4/2
    got = call("ties", [d1, d2, d3], base, {}, [{"density": 1.0}] * 3)
    assert_close(got, torch.tensor([4.0, -2.0, -5.0, 2.0]))


def test_ties_count_majority():
    base = torch.zeros(1)
    got = call(
        "ties", [torch.tensor([5.0]), torch.tensor([-1.0]), torch.tensor([-1.0])], base, {"majority": "count"}
    )
    assert_close(got, torch.tensor([-1.0]))
    got = call("ties", [torch.tensor([5.0]), torch.tensor([-1.0]), torch.tensor([-1.0])], base)
    assert_close(got, torch.tensor([5.0]))


def test_magnitude_trim_keeps_exactly_k_even_with_ties():
    from mergeflow.merge.sparsify import magnitude_trim_

    x = torch.tensor([3.0, -1.0, 1.0, 2.0, -1.0, 1.0, 0.5])
    (kept,) = magnitude_trim_([x.clone()], [3 / 7])  # k = 3: 3, 2 and the first tied 1
    assert torch.equal(kept, torch.tensor([3.0, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0]))
    bf = torch.randn(100_000, generator=torch.Generator().manual_seed(1)).bfloat16().float()
    for density in (0.01, 0.3, 0.77):
        (kept,) = magnitude_trim_([bf.clone()], [density])
        assert int((kept != 0).sum()) == int(density * bf.numel())
        assert (
            kept.abs().min() == 0
            and kept[kept != 0].abs().min() >= bf.abs().sort().values[-int(density * 1e5)]
        )


def test_magnitude_trim_uses_kth_value():
    from mergeflow.merge.sparsify import magnitude_trim_

    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    (kept,) = magnitude_trim_([x.clone()], [0.1])
    assert (kept != 0).sum() == 100
    assert kept.abs().min() == 0 and kept[kept != 0].abs().min() >= x.abs().sort().values[-100]


def test_dare_linear_drop_rescale_and_determinism():
    base = torch.zeros(20000)
    x = torch.full((20000,), 2.0)
    got = call("dare_linear", [x], base, {}, [{"density": 0.25}], tensor="w")
    kept = got != 0
    assert set(got.unique().tolist()) <= {0.0, 8.0}  # survivors scaled by 1/density
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    assert torch.equal(got, call("dare_linear", [x], base, {}, [{"density": 0.25}], tensor="w"))
    assert not torch.equal(got, call("dare_linear", [x], base, {}, [{"density": 0.25}], tensor="v"))
    assert not torch.equal(got, call("dare_linear", [x], base, {}, [{"density": 0.25}], tensor="w", seed=1))
    no_rescale = call("dare_linear", [x], base, {"rescale": False}, [{"density": 0.25}], tensor="w")
    assert_close(no_rescale * 4, got)
    # density 1 is task arithmetic
    assert_close(
        call("dare_linear", [a, b], c, {"lambda": 0.3}, [{"weight": 1.0}, {"weight": 0.5}]),
        call("task_arithmetic", [a, b], c, {"lambda": 0.3}, [{"weight": 1.0}, {"weight": 0.5}]),
    )


def test_dare_ties_at_full_density_is_ties():
    mp = [{"weight": 1.0}, {"weight": 0.5}]
    assert_close(call("dare_ties", [a, b], c, {}, mp), call("ties", [a, b], c, {}, mp))


def test_slerp():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert_close(call("slerp", [e0, e1], params={"t": 0.5}), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert_close(call("slerp", [e0, e1], params={"t": 0.0}), e0)
    assert_close(call("slerp", [e0, e1], params={"t": 1.0}), e1)
    theta = math.pi / 2
    t = 0.3
    assert_close(
        call("slerp", [e0, 2 * e1], params={"t": t}),
        math.sin((1 - t) * theta) / math.sin(theta) * e0 + math.sin(t * theta) / math.sin(theta) * 2 * e1,
    )
    # nearly colinear: linear interpolation
    v = torch.tensor([1.0, 2.0, 3.0])
    assert_close(call("slerp", [v, 2 * v], params={"t": 0.25}), 1.25 * v)


def test_passthrough_takes_the_one_selected_model():
    op = OPERATORS["passthrough"]
    p = op.params.model_validate({"source": "b"})
    assert op.select(p, ["a", "b", "c"]) == ["b"]
    assert op.select(op.params(), ["a", "b"]) == ["a"]
    assert torch.equal(call("passthrough", [b], params={"source": "b"}, names=["b"]), b)


@pytest.mark.parametrize("layout", ["random", "sorted", "constant_rows", "ties"])
def test_kth_largest_is_exact(layout):
    from mergeflow.merge.sparsify import kth_largest

    gen = torch.Generator().manual_seed(5)
    n = 1_000_003
    if layout == "random":
        v = torch.rand(n, generator=gen)
    elif layout == "sorted":
        v = torch.linspace(0, 1, n)
    elif layout == "constant_rows":  # a layout whose strided sample sees only a few distinct values
        v = torch.arange(n, dtype=torch.float32).remainder(15.0)
    else:
        v = torch.randint(0, 7, (n,), generator=gen).float()
    for k in (1, 17, n // 3, n // 2, n - 5, n):
        assert kth_largest(v, k).item() == torch.kthvalue(v, n - k + 1).values.item(), (layout, k)


def test_breadcrumbs_masks_both_tails():
    base = torch.zeros(10)
    x = torch.tensor([1.0, -2, 3, -4, 5, -6, 7, -8, 9, -10])
    # n 10, density 0.5 -> k 5, gamma 0.2 -> 2 outliers, 3 smallest dropped: magnitudes 4..8 stay
    got = call("breadcrumbs", [x], base, {}, [{"density": 0.5, "gamma": 0.2}])
    assert_close(got, torch.tensor([0.0, 0, 0, -4, 5, -6, 7, -8, 0, 0]))
    # density + gamma > 1: fewer outliers go so that density holds (only the largest is dropped)
    got = call("breadcrumbs", [x], base, {"lambda": 2.0}, [{"density": 0.9, "gamma": 0.2}])
    assert_close(got, 2 * torch.tensor([1.0, -2, 3, -4, 5, -6, 7, -8, 9, 0]))


def test_breadcrumbs_ties_elects_signs_after_masking():
    base = torch.zeros(4)
    a = torch.tensor([1.0, 2.0, -3.0, 4.0])
    b = torch.tensor([-2.0, 1.0, 3.5, -0.5])
    mp = [{"density": 1.0, "gamma": 0.0}] * 2
    # no masking: sum [-1, 3, 0.5, 3.5] -> signs [-, +, +, +]; agreeing sums (normalize false): [-2, 3, 3.5, 4]
    assert_close(call("breadcrumbs_ties", [a, b], base, {}, mp), torch.tensor([-2.0, 3.0, 3.5, 4.0]))


def test_della_with_zero_spread_is_dare_and_rescales_by_keep_probability():
    base = torch.zeros(64, 50)
    x = torch.randn(64, 50, generator=torch.Generator().manual_seed(3))
    dare = call("dare_linear", [x], base, {}, [{"density": 0.4}], tensor="w")
    della = call("della_linear", [x], base, {}, [{"density": 0.4, "epsilon": 0.0}], tensor="w")
    assert_close(della, dare)
    got = call("della_linear", [x], base, {}, [{"density": 0.5, "epsilon": 0.4}], tensor="w")
    rank = x.abs().argsort(dim=1, stable=True).argsort(dim=1).float()
    prob = 0.1 + 0.8 * rank / 49
    kept = got != 0
    assert_close(got[kept], (x / prob)[kept])  # survivors scaled by 1 / their keep probability
    top, bottom = rank >= 45, rank <= 4
    assert kept[top].float().mean() > 0.75 and kept[bottom].float().mean() < 0.25


def test_model_stock_interpolates_by_the_angle():
    base = torch.zeros(2)
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert_close(call("model_stock", [e0, e1], base), base)  # orthogonal task vectors: t = 0
    assert_close(call("model_stock", [e0, e0], base), e0)  # parallel: t = 1
    b = torch.tensor([0.5, 3**0.5 / 2])  # cos 0.5 -> t = 2 * 0.5 / 1.5
    assert_close(call("model_stock", [e0, b], base), (2 / 3) * (e0 + b) / 2)
    rows = torch.stack([e0, e0]), torch.stack([e1, e0])  # filter-wise: row 0 orthogonal, row 1 parallel
    got = call("model_stock", list(rows), torch.zeros(2, 2), {"filter_wise": True})
    assert_close(got, torch.stack([torch.zeros(2), e0]))


def test_nearswap_weights_by_closeness():
    base = torch.zeros(3)
    other = torch.tensor([0.0005, 0.002, -0.01])
    assert_close(call("nearswap", [other], base, {"t": 0.001}), torch.tensor([0.0005, 0.001, -0.001]))


def test_karcher_of_two_unit_vectors_is_slerp_and_scales_by_mean_norm():
    gen = torch.Generator().manual_seed(6)
    a, b = (
        torch.randn(50, generator=gen, dtype=torch.float64),
        torch.randn(50, generator=gen, dtype=torch.float64),
    )
    a, b = a / a.norm(), b / b.norm()
    for t in (0.25, 0.5, 0.8):
        got = call("karcher", [a, b], model_params=[{"weight": 1 - t}, {"weight": t}])
        assert_close(got, call("slerp", [a, b], params={"t": t}), rtol=1e-6, atol=1e-9)
    got = call("karcher", [3 * a, a], model_params=[{"weight": 1.0}, {"weight": 1.0}])
    assert_close(got, 2 * a)  # same direction, mean norm 2
    # three directions: the result is a fixed point (its weighted log maps cancel)
    c = torch.randn(50, generator=gen, dtype=torch.float64)
    mu = call("karcher", [a, b, c / c.norm()], model_params=[{"weight": 1.0}] * 3, params={"max_iter": 200})
    mu = mu / mu.norm()
    g = sum(
        (u - torch.dot(mu, u) * mu) * torch.arccos(torch.dot(mu, u)) / torch.sqrt(1 - torch.dot(mu, u) ** 2)
        for u in (a, b, c / c.norm())
    )
    assert g.norm() < 1e-6


def test_sce_selects_weights_and_erases():
    base = torch.zeros(4)
    d1 = torch.tensor([1.0, 2.0, -1.0, 0.5])
    d2 = torch.tensor([3.0, -2.0, -1.0, 1.5])
    # no selection: energies mean(d^2) 6.25/4 and 16.25/4 -> weights 6.25/22.5 and 16.25/22.5
    w1, w2 = 6.25 / 22.5, 16.25 / 22.5
    # elected signs of d1 + d2 = [4, 0, -2, 2]: entry 1 has no elected sign, so nothing agrees there
    want = torch.tensor([(w1 * 1 + w2 * 3) / (w1 + w2), 0.0, -1.0, (w1 * 0.5 + w2 * 1.5) / (w1 + w2)])
    assert_close(call("sce", [d1, d2], base), want)
    # variances across models [1, 4, 0, 0.25]: 3 nonzero, select_topk 0.67 keeps k = 2 (entries 1 and 0)
    got = call("sce", [d1, d2], base, {"select_topk": 0.67})
    e1, e2 = (1 + 4) / 4, (9 + 4) / 4  # energies of the selected task vectors
    v1, v2 = e1 / (e1 + e2), e2 / (e1 + e2)
    assert_close(got, torch.tensor([(v1 * 1 + v2 * 3) / (v1 + v2), 0.0, 0.0, 0.0]))


def test_nuslerp_flat_rowwise_and_with_base():
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert_close(
        call("nuslerp", [e0, 2 * e1], model_params=[{"weight": 1.0}, {"weight": 3.0}]),
        call("slerp", [e0, 2 * e1], params={"t": 0.75}),
    )
    rows_a, rows_b = torch.stack([e0, e1]), torch.stack([e1, e0])
    half = (e0 + e1) / 2**0.5
    got = call("nuslerp", [rows_a, rows_b], params={"flatten": False}, model_params=[{"weight": 1.0}] * 2)
    assert_close(got, torch.stack([half, half]))
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    cols = call(
        "nuslerp", [a, b], params={"flatten": False, "row_wise": True}, model_params=[{"weight": 1.0}] * 2
    )
    rows = call(
        "nuslerp",
        [a.T.contiguous(), b.T.contiguous()],
        params={"flatten": False},
        model_params=[{"weight": 1.0}] * 2,
    )
    assert_close(cols, rows.T)  # column-wise is row-wise on the transposes
    base = torch.tensor([5.0, 5.0])
    got = call("nuslerp", [base + e0, base + e1], base, model_params=[{"weight": 1.0}] * 2)
    assert_close(got, base + half)


def test_multislerp_is_the_normalised_weighted_direction_times_mean_norm():
    e0, e1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    two = call("multislerp", [e0, e1], model_params=[{"weight": 1.0}] * 2)
    assert_close(two, call("slerp", [e0, e1], params={"t": 0.5}))
    e2 = torch.tensor([0.0, 0.0, 1.0])
    got = call(
        "multislerp", [2 * e0, e1, 3 * e2], model_params=[{"weight": 1.0}, {"weight": 1.0}, {"weight": 2.0}]
    )
    direction = torch.tensor([0.25, 0.25, 0.5]) / torch.tensor([0.25, 0.25, 0.5]).norm()
    assert_close(got, direction * (0.25 * 2 + 0.25 * 1 + 0.5 * 3))
    base = torch.ones(3)
    assert_close(
        call("multislerp", [base + e0, base + e1], base, model_params=[{"weight": 1.0}] * 2), base + two
    )


def test_l1_rescale_restores_each_task_vectors_l1_norm():
    base = torch.zeros(1000)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(11))
    for op, mp in (("dare_linear", {"density": 0.3}), ("della_linear", {"density": 0.5, "epsilon": 0.3})):
        got = call(op, [x], base, {"rescale": "l1"}, [mp], tensor="w")
        assert abs(float(got.abs().sum()) - float(x.abs().sum())) < 1e-3 * float(x.abs().sum())
        plain = call(op, [x], base, {"rescale": False}, [mp], tensor="w")
        assert torch.equal(got != 0, plain != 0)  # same draws, only the scale differs


def test_trim_rescale_restores_l1_norm_for_ties_and_breadcrumbs():
    base = torch.zeros(4)
    d1 = torch.tensor([4.0, -1.0, 0.2, 3.0])  # L1 8.2; density 0.5 keeps [4, 0, 0, 3] (L1 7) -> x 8.2/7
    got = call("ties", [d1], base, {"rescale": True}, [{"density": 0.5}])
    assert_close(got, torch.tensor([4.0, 0, 0, 3.0]) * (8.2 / 7))
    assert_close(call("ties", [d1], base, {}, [{"density": 0.5}]), torch.tensor([4.0, 0, 0, 3.0]))
    x = torch.tensor([1.0, -2, 3, -4, 5, -6, 7, -8, 9, -10])  # L1 55; kept magnitudes 4..8 (L1 30)
    got = call("breadcrumbs", [x], torch.zeros(10), {"rescale": True}, [{"density": 0.5, "gamma": 0.2}])
    assert_close(got, torch.tensor([0.0, 0, 0, -4, 5, -6, 7, -8, 0, 0]) * (55 / 30))
    got = call("breadcrumbs_ties", [x], torch.zeros(10), {"rescale": True}, [{"density": 0.5, "gamma": 0.2}])
    assert_close(got, torch.tensor([0.0, 0, 0, -4, 5, -6, 7, -8, 0, 0]) * (55 / 30))
