"""Solar shares: splitting the site's measured solar over apps, and offering excess
solar to other apps' batteries.

- ``split_solar``: site solar (mJ, measured in tick k-1) is apportioned over apps by
  ``solar_fraction`` with the largest-remainder method (fractions resolved to parts per
  billion); what no app owns (fractions summing below 1) is ``unallocated``. The parts
  always sum to the site solar exactly.
- ``distribute_offers``: with ``ExcessSolarPolicy.offer``, each donor's excess (apps in
  sorted order, then the site's unallocated solar) is offered to the *other* apps in
  sorted order, each taking what its battery can still take this tick (C-rate and room).
  What no one takes is curtailed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ecovisor.core.apportion import largest_remainder
from ecovisor.core.shares import AppShare

PPB = 1_000_000_000
UNALLOCATED = "_unallocated"  # not a valid app id, so it never collides


def solar_weights(shares: Mapping[str, AppShare]) -> dict[str, int]:
    """Integer weights (parts per billion) of each app and of the unallocated rest."""
    w = {app: round(s.solar_fraction * PPB) for app, s in shares.items()}
    total = sum(w.values())
    if total > PPB:
        raise ValueError(f"solar fractions sum to {total / PPB:.9f} > 1")
    w[UNALLOCATED] = PPB - total
    return w


def split_solar(site_solar_mj: int, shares: Mapping[str, AppShare]) -> tuple[dict[str, int], int]:
    """(solar per app, unallocated solar) of one tick, summing exactly to the site's."""
    weights = solar_weights(shares)  # (raises on fractions summing above 1)
    if not site_solar_mj:  # a dark tick: nothing to split
        return dict.fromkeys(shares, 0), 0
    parts = largest_remainder(site_solar_mj, weights)
    rest = parts.pop(UNALLOCATED)
    return parts, rest


def distribute_offers(
    donors: Sequence[tuple[str, int]], capacity: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """Offer each donor's excess to the other apps' batteries.

    ``donors``: (name, excess mJ) in the order they offer. ``capacity``: how much each
    recipient can still take at its battery's bus side this tick. Recipients are taken
    in sorted order, never the donor itself. Returns (given per donor, received per
    recipient); ``sum(given) == sum(received)``.
    """
    room = dict(capacity)
    order = sorted(room)
    given: dict[str, int] = {}
    received: dict[str, int] = dict.fromkeys(order, 0)
    # only recipients with room left, still in sorted order: a full one is dropped once
    # instead of being skipped by every later donor (donors x apps at 100 apps a site)
    open_ = [r for r in order if room[r] > 0]
    for donor, excess in donors:
        left = excess
        filled = False
        for r in open_:
            if left == 0:
                break
            if r == donor:
                continue
            take = min(left, room[r])
            room[r] -= take
            received[r] += take
            left -= take
            filled = filled or room[r] == 0
        given[donor] = excess - left
        if filled:
            open_ = [r for r in open_ if room[r] > 0]
    return given, received
