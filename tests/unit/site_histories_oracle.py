"""The carbon histories' site rule as it was written before 3 December 2026, kept as the
tests' oracle: each app's histories pushed one container at a time (``update_history``),
then the site's histories cut to its budget (``bound_site_histories``: in sorted (app,
container) order, each that still fits). The product applies the same rule in one pass
that does not build the histories it would cut (``carbon_limits.advance_site_histories``);
tests/property/test_site_histories.py compares the two. Imported as
``tests.unit.site_histories_oracle``."""

from __future__ import annotations

from collections.abc import Mapping

from ecovisor.core.carbon_limits import (
    HISTORY_SITE_BUDGET,
    MAX_BUCKETS,
    history_size,
    push_history,
)
from ecovisor.core.state import AppState, CarbonHistory


def update_history(history: Mapping[str, CarbonHistory], carbon_ug: Mapping[str, int],
                   k: int, max_ticks: int) -> dict[str, CarbonHistory]:
    """One app's histories after tick ``k``: silent for longer than the largest window
    (and its bucket) forgotten, then each container that emitted pushes its carbon."""
    keep = max_ticks + -(-max_ticks // MAX_BUCKETS)
    out = {c: h for c, h in history.items() if h.max_ticks == max_ticks and h.last_k + keep > k}
    for c, v in carbon_ug.items():
        if v:
            out[c] = push_history(out.get(c), max_ticks, k, v)
    return out


def bound_site_histories(apps: dict[str, AppState], *, max_histories: int,
                         budget: int = HISTORY_SITE_BUDGET) -> dict[str, AppState]:
    """``apps`` with their carbon histories cut to ``budget`` values and ``max_histories``
    histories in all (``apps`` itself when they fit; an app that lost one has its
    histories in sorted order). The count is the caller's: the product's default is
    ``carbon_limits.history_count_max`` of the site's Δt (the property test passes it)."""
    if (sum(history_size(h) for st in apps.values()
            for h in st.tracking.carbon_history.values()) <= budget
            and sum(len(st.tracking.carbon_history) for st in apps.values()) <= max_histories):
        return apps
    sizes = {(a, c): history_size(h) for a in sorted(apps)
             for c, h in sorted(apps[a].tracking.carbon_history.items())}
    keep: dict[str, dict[str, CarbonHistory]] = {a: {} for a in apps}
    used = count = 0
    for (a, c), n in sizes.items():
        if used + n > budget or count == max_histories:
            continue
        used += n
        count += 1
        keep[a][c] = apps[a].tracking.carbon_history[c]
    out = dict(apps)
    for a, st in apps.items():
        if len(keep[a]) != len(st.tracking.carbon_history):
            tracking = st.tracking.model_copy(update={"carbon_history": keep[a]})
            out[a] = st.model_copy(update={"tracking": tracking})
    return out
