"""Exact integer apportionment (largest remainder, Hamilton's method).

Every split the ledger makes (site solar over apps, an app's flows over its containers,
a carbon booking over containers, a site grid cut over apps) goes through here, so the
parts always sum to the whole exactly and the result depends only on the inputs.
"""

from __future__ import annotations

from collections.abc import Mapping


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
    if total < 0:
        raise ValueError(f"cannot apportion a negative total {total}")
    wsum = 0
    for w in weights.values():
        if w < 0:
            raise ValueError(f"negative weight in {dict(weights)}")
        wsum += w
    if wsum == 0:
        if total:
            raise ValueError(f"cannot apportion {total} over zero weights")
        return dict.fromkeys(weights, 0)
    out: dict[str, int] = {}
    rems: list[tuple[int, str]] = []
    given = 0
    for key, w in weights.items():
        q, r = divmod(total * w, wsum)
        out[key] = q
        given += q
        if r:
            rems.append((-r, key))
    missing = total - given
    if missing:
        rems.sort()
        for _, key in rems[:missing]:
            out[key] += 1
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
    total = sum(demand.values())
    if sum(flows.values()) != total:
        raise ValueError(f"flows {dict(flows)} do not sum to demand {total}")
    remaining = dict(demand)
    out: dict[str, dict[str, int]] = {c: {} for c in demand}
    names = list(flows)
    for i, name in enumerate(names):
        f = flows[name]
        if i == len(names) - 1:
            part = remaining
        elif f == 0:
            part = dict.fromkeys(remaining, 0)
        else:
            part = largest_remainder(f, remaining)
        for c, v in part.items():
            out[c][name] = v
        if i < len(names) - 1 and f:
            remaining = {c: remaining[c] - part[c] for c in remaining}
    return out
