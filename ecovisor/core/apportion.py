"""Exact integer apportionment (largest remainder, Hamilton's method).

Every split the ledger makes (site solar over apps, an app's flows over its containers,
a carbon booking over containers, a site grid cut over apps) goes through here, so the
parts always sum to the whole exactly and the result depends only on the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def largest_remainder(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split the non-negative integer ``total`` over ``weights`` (non-negative ints).

    Each key first gets ``floor(total * w / W)``; the units still missing go one each to
    the keys with the largest remainders, ties broken by key in ascending order. All in
    integer arithmetic, so the split is exact and deterministic:

    - ``sum(result.values()) == total`` whenever ``W > 0``;
    - ``result[k] <= weights[k]`` whenever ``total <= W`` (a part never exceeds its
      weight, so a split of a flow by demand never exceeds any demand);
    - every key of ``weights`` is in the result, keys of weight 0 get 0.

    With ``W == 0`` nothing can be apportioned: ``total`` must then be 0.
    """
    keys = list(weights)
    return dict(zip(keys, apportion(total, list(weights.values()), keys), strict=True))


def key_order(keys: Sequence[str]) -> list[int]:
    """Indices of ``keys`` in ascending key order (the tie-break of every split)."""
    return sorted(range(len(keys)), key=keys.__getitem__)


def apportion(total: int, weights: Sequence[int], keys: Sequence[str],
              order: list[int] | None = None) -> list[int]:
    """``largest_remainder`` over parallel sequences (``keys[i]`` names ``weights[i]``
    and breaks ties): the form of the per-container hot path, which keeps its
    containers in lists rather than building a dict per flow. ``order``:
    ``key_order(keys)`` if the caller has it (it is sorted once per set of keys)."""
    if total < 0:
        raise ValueError(f"cannot apportion a negative total {total}")
    if weights and min(weights) < 0:
        raise ValueError(f"negative weight in {dict(zip(keys, weights, strict=True))}")
    wsum = sum(weights)
    if wsum == 0:
        if total:
            raise ValueError(f"cannot apportion {total} over zero weights")
        return [0] * len(weights)
    if total == 0:
        return [0] * len(weights)
    out = [total * w // wsum for w in weights]
    missing = total - sum(out)
    if missing:
        # largest remainder first, ties by key: one int per part, -remainder * n + the
        # key's rank (rank < n), sorts in exactly that order without a tuple per part
        if order is None:
            order = key_order(keys)
        n = len(order)
        sort_keys = []
        for rank, i in enumerate(order):
            r = total * weights[i] % wsum
            if r:
                sort_keys.append(-r * n + rank)
        sort_keys.sort()
        for sk in sort_keys[:missing]:
            out[order[sk % n]] += 1
    return out


def split_flows(
    demand: Mapping[str, int], flows: Mapping[str, int]
) -> dict[str, dict[str, int]]:
    """Split several flows over containers in proportion to each container's demand so
    that BOTH margins are exact: each flow's parts sum to the flow, and each container's
    parts sum to its demand. Requires ``sum(flows) == sum(demand)``.

    Flows are taken in the given order; each is apportioned (largest remainder) in
    proportion to every container's *remaining* demand, and the last flow takes exactly
    what remains. Remaining demand shrinks in proportion, so every part stays within a
    couple of mJ of ``flow * demand_c / total_demand``.

    Returns ``{container: {flow: mJ}}``.
    """
    keys = list(demand)
    names = list(flows)
    parts = split_flow_lists(keys, list(demand.values()), list(flows.values()))
    return {c: {name: parts[j][i] for j, name in enumerate(names)} for i, c in enumerate(keys)}


def split_flow_lists(keys: Sequence[str], demand: Sequence[int], flows: Sequence[int],
                     order: list[int] | None = None) -> list[list[int]]:
    """``split_flows`` over parallel sequences: ``demand[i]`` is container ``keys[i]``'s;
    returns one list of parts per flow, in the containers' order. ``order``: as in
    ``apportion``."""
    total = sum(demand)
    if sum(flows) != total:
        raise ValueError(f"flows {list(flows)} do not sum to demand {total}")
    remaining = list(demand)
    out: list[list[int]] = []
    last = len(flows) - 1
    for i, f in enumerate(flows):
        if i == last:
            out.append(remaining)
        elif f == 0:
            out.append([0] * len(remaining))
        else:
            if order is None:
                order = key_order(keys)
            part = apportion(f, remaining, keys, order)
            out.append(part)
            remaining = [r - p for r, p in zip(remaining, part, strict=True)]
    return out
