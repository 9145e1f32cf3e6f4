"""Macro instances: how a pool's backends are grouped, and how the grouping follows the fleet
(ALGORITHMS.md §5, EcoServe's mitosis scaling).

Pure functions over tuples of backend names. Adding fills an instance up to N_u; adding past
that splits a full instance in two (mitosis) and the newcomer joins the new half. Removing
takes a backend out of its instance; two instances whose sizes sum to at most N_u merge, and
an instance left below N_l takes a backend from the largest one that can spare it. Split and
merge are bookkeeping: no weights move, requests in flight stay where they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gateway.config import BackendConfig, GatewayConfig

Instances = tuple[tuple[str, ...], ...]


@dataclass(frozen=True, slots=True)
class Bounds:
    low: int  # N_l
    high: int  # N_u


def add(instances: Instances, name: str, bounds: Bounds) -> Instances:
    """Expand: the fullest instance with room takes it (the newest on a tie), so one fills
    before the next grows; with every instance full, the newest full one splits in two."""
    if not instances:
        return ((name,),)
    open_ = [i for i, members in enumerate(instances) if len(members) < bounds.high]
    if open_:
        target = max(open_, key=lambda i: (len(instances[i]), i))
        return _replace(instances, target, (*instances[target], name))
    full = len(instances) - 1
    keep = (bounds.high + 1) // 2
    members = instances[full]
    return (*instances[:full], members[:keep], (*members[keep:], name))


def remove(instances: Instances, name: str, bounds: Bounds) -> Instances:
    """Contract: take the backend out of its instance, then merge and rebalance."""
    kept = tuple(tuple(m for m in members if m != name) for members in instances)
    kept = tuple(members for members in kept if members)
    return _rebalance(_merge(kept, bounds), bounds)


def _merge(instances: Instances, bounds: Bounds) -> Instances:
    """Merge the two smallest instances while their sizes sum to at most N_u."""
    while len(instances) > 1:
        order = sorted(range(len(instances)), key=lambda i: (len(instances[i]), i))
        first, second = sorted(order[:2])
        if len(instances[first]) + len(instances[second]) > bounds.high:
            break
        merged = (*instances[first], *instances[second])
        instances = tuple(
            merged if i == first else members for i, members in enumerate(instances) if i != second
        )
    return instances


def _rebalance(instances: Instances, bounds: Bounds) -> Instances:
    """An instance below N_l takes backends from the largest instance above N_l."""
    for i in range(len(instances)):
        while len(instances[i]) < bounds.low:
            donors = [
                j for j, members in enumerate(instances) if j != i and len(members) > bounds.low
            ]
            if not donors:
                return instances  # the pool is too small to do better
            donor = max(donors, key=lambda j: (len(instances[j]), j))
            moved = instances[donor][-1]
            instances = _replace(instances, donor, instances[donor][:-1])
            instances = _replace(instances, i, (*instances[i], moved))
    return instances


def _replace(instances: Instances, index: int, members: tuple[str, ...]) -> Instances:
    return tuple(members if i == index else old for i, old in enumerate(instances))


def removal_candidate(instances: Instances, bounds: Bounds) -> str | None:
    """Which backend to give back on scale-in: shrink the smallest instance that is above
    N_l; with none, take from the fullest."""
    above = [i for i, members in enumerate(instances) if len(members) > bounds.low]
    if above:
        smallest = min(above, key=lambda i: (len(instances[i]), -i))
        return instances[smallest][-1]
    if not instances:
        return None
    fullest = max(range(len(instances)), key=lambda i: (len(instances[i]), i))
    return instances[fullest][-1]


def valid(instances: Instances, bounds: Bounds) -> bool:
    """Every instance within bounds (one undersized instance is all a small pool can be)."""
    if len(instances) == 1:
        return 1 <= len(instances[0]) <= bounds.high
    return all(bounds.low <= len(members) <= bounds.high for members in instances)


def follow(previous: Instances, members: Sequence[str], bounds: Bounds) -> Instances:
    """The pool's instances after its backends became ``members``: removals, then additions
    in order, by the rules above; then any merge the bounds allow (they may have been
    raised). A layout the bounds no longer allow is rebuilt."""
    wanted = set(members)
    seen: set[str] = set()
    instances: Instances = ()
    for group in previous:  # a name listed twice keeps its first place
        kept = tuple(n for n in dict.fromkeys(group) if n not in seen)
        seen.update(kept)
        if kept:
            instances = (*instances, kept)
    for name in [n for group in instances for n in group if n not in wanted]:
        instances = remove(instances, name, bounds)
    placed = {name for group in instances for name in group}
    for name in members:
        if name not in placed:
            instances = add(instances, name, bounds)
            placed.add(name)
    instances = _rebalance(_merge(instances, bounds), bounds)
    if not valid(instances, bounds) and instances:
        rebuilt: Instances = ()
        for name in (n for group in instances for n in group):
            rebuilt = add(rebuilt, name, bounds)
        instances = rebuilt
    return instances


def pool_members(backends: Iterable[BackendConfig]) -> dict[str, list[str]]:
    pools: dict[str, list[str]] = {}
    for backend in backends:
        pools.setdefault(backend.pool_name, []).append(backend.name)
    return pools


def with_layout(
    config: GatewayConfig, previous: Mapping[str, Instances] | None = None
) -> GatewayConfig:
    """The config with each pool's macro instances following its backends, starting from
    ``previous`` (by default the layout the config carries)."""
    before = config.macro_instances if previous is None else previous
    layout = {
        pool: follow(before.get(pool, ()), members, bounds_of(config, pool))
        for pool, members in pool_members(config.backends).items()
    }
    if layout == config.macro_instances:
        return config
    return config.model_copy(update={"macro_instances": layout})


def bounds_of(config: GatewayConfig, pool: str) -> Bounds:
    settings = config.pool(pool)
    return Bounds(settings.min_size, settings.max_size)


def instance_ids(config: GatewayConfig) -> dict[str, tuple[str, int]]:
    """Backend name -> (its instance's id, its place in the rolling cycle)."""
    index: dict[str, tuple[str, int]] = {}
    for pool, instances in config.macro_instances.items():
        for number, members in enumerate(instances):
            for position, name in enumerate(members):
                index[name] = (f"{pool}/{number}", position)
    return index
