"""The mitosis rules: expand, split, contract, merge, and what a layout becomes when the pool's
backends change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import GatewayConfig, PoolConfig
from gateway.scheduling.macro import (
    Bounds,
    Instances,
    add,
    follow,
    instance_ids,
    removal_candidate,
    remove,
    valid,
    with_layout,
)

B = Bounds(2, 4)


def grow(names: str, bounds: Bounds = B) -> Instances:
    instances: Instances = ()
    for name in names:
        instances = add(instances, name, bounds)
    return instances


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("a", (("a",),)),
        # Expand: one instance fills up to N_u.
        ("abcd", (("a", "b", "c", "d"),)),
        # Split: past N_u the full instance divides and the newcomer joins the new half.
        ("abcde", (("a", "b"), ("c", "d", "e"))),
        # Fill the fullest instance with room first (the new half), then the other.
        ("abcdef", (("a", "b"), ("c", "d", "e", "f"))),
        ("abcdefg", (("a", "b", "g"), ("c", "d", "e", "f"))),
        ("abcdefgh", (("a", "b", "g", "h"), ("c", "d", "e", "f"))),
        # Every instance full: the newest full one splits.
        ("abcdefghi", (("a", "b", "g", "h"), ("c", "d"), ("e", "f", "i"))),
    ],
)
def test_adding_expands_then_splits(names: str, expected: Instances) -> None:
    result = grow(names)
    assert result == expected
    assert valid(result, B)


@pytest.mark.parametrize(
    ("bounds", "count"),
    [(Bounds(1, 1), 5), (Bounds(1, 2), 7), (Bounds(3, 5), 23), (Bounds(6, 11), 40)],
)
def test_splits_always_leave_valid_instances(bounds: Bounds, count: int) -> None:
    names = [f"b{i}" for i in range(count)]
    instances: Instances = ()
    for name in names:
        instances = add(instances, name, bounds)
        assert valid(instances, bounds) or len(instances) == 1, instances
    assert sorted(n for group in instances for n in group) == sorted(names)


@pytest.mark.parametrize(
    ("before", "removed", "expected"),
    [
        # Contract: an instance above N_l just shrinks.
        ((("a", "b", "c"), ("d", "e", "f")), "c", (("a", "b"), ("d", "e", "f"))),
        # Merge: two instances whose sizes sum to at most N_u become one.
        ((("a", "b"), ("c", "d", "e")), "e", (("a", "b", "c", "d"),)),
        ((("a", "b", "c"), ("d", "e")), "a", (("b", "c", "d", "e"),)),
        # Below N_l with no merge possible: take one from the largest instance above N_l.
        ((("a", "b"), ("c", "d", "e", "f")), "a", (("b", "f"), ("c", "d", "e"))),
        # The last backend of an instance leaves: the instance goes.
        ((("a",), ("b", "c", "d", "e")), "a", (("b", "c", "d", "e"),)),
        # A pool too small for N_l stays as one undersized instance.
        ((("a", "b"),), "a", (("b",),)),
        ((("a",),), "a", ()),
        # An unknown name changes nothing.
        ((("a", "b"),), "z", (("a", "b"),)),
    ],
)
def test_removing_contracts_merges_and_rebalances(
    before: Instances, removed: str, expected: Instances
) -> None:
    assert remove(before, removed, B) == expected


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        # Shrink the smallest instance above N_l first ...
        ((("a", "b", "c", "d"), ("e", "f", "g")), "g"),
        ((("a", "b"), ("c", "d", "e"), ("f", "g", "h", "i")), "e"),
        # ... with none above N_l, take from the fullest.
        ((("a", "b"), ("c", "d")), "d"),
        ((), None),
    ],
)
def test_removal_candidate(instances: Instances, expected: str | None) -> None:
    assert removal_candidate(instances, B) == expected


def test_follow_applies_removals_then_additions_and_keeps_the_rest_in_place() -> None:
    before = (("a", "b", "c"), ("d", "e", "f"))
    after = follow(before, ["a", "b", "c", "d", "f", "g"], B)
    # e leaves its instance; g joins the fullest instance with room.
    assert after == (("a", "b", "c", "g"), ("d", "f"))
    # Nothing changed: nothing moves.
    assert follow(after, ["g", "f", "d", "c", "b", "a"], B) == after


def test_follow_rebuilds_a_layout_the_new_bounds_forbid() -> None:
    before = (("a", "b", "c", "d"),)
    after = follow(before, list("abcd"), Bounds(1, 2))
    assert after == (("a",), ("b",), ("c", "d")) or valid(after, Bounds(1, 2))
    assert all(len(group) <= 2 for group in after)
    assert sorted(n for g in after for n in g) == list("abcd")


def test_follow_drops_duplicates_and_unknown_names() -> None:
    assert follow((("a", "b"), ("b", "z")), ["a", "b"], B) == (("a", "b"),)


def test_config_layout_per_pool() -> None:
    config = GatewayConfig.model_validate(
        {
            "pools": {"m": {"min_size": 1, "max_size": 2}},
            "backends": [
                {"name": n, "url": f"http://127.0.0.1:{9000 + i}", "models": ["m"]}
                for i, n in enumerate("abc")
            ]
            + [{"name": "x", "url": "http://127.0.0.1:9100", "pool": "other"}],
        }
    )
    laid = with_layout(config)
    assert laid.macro_instances == {"m": (("a",), ("b", "c")), "other": (("x",),)}
    assert instance_ids(laid) == {
        "a": ("m/0", 0),
        "b": ("m/1", 0),
        "c": ("m/1", 1),
        "x": ("other/0", 0),
    }
    assert with_layout(laid) is laid


def test_pool_bounds_must_allow_a_split() -> None:
    with pytest.raises(ValidationError, match="2\\*min_size-1"):
        PoolConfig(min_size=4, max_size=6)
    assert PoolConfig(min_size=6, max_size=11).max_size == 11
