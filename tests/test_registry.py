import pytest

from mergeflow.merge.catalog import OPERATORS
from mergeflow.registry import Registry


def test_duplicate_names_are_refused():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 2)


def test_bad_names_are_refused():
    reg: Registry[int] = Registry("thing")
    for bad in ("", "A", "a.b", "a-b", "x y"):
        with pytest.raises(ValueError):
            reg.add(bad, 1)


def test_unknown_name_lists_known_ones():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    with pytest.raises(KeyError, match="alpha"):
        reg.get("beta")
    assert reg["alpha"] == 1 and len(reg) == 1 and list(reg) == ["alpha"]


def test_core_operators_registered():
    assert {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "passthrough"} <= set(
        OPERATORS
    )
