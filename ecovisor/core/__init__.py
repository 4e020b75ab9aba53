"""The pure energy core: units, apportionment, shares, power models and attribution, the
power-cap rule, the virtual battery, the solar share, the per-tick step (``tick``),
ledger entries, events, carbon limits, SCI and the tick clock.

No I/O, no clocks, no imports from the layers above (checked by ``make lint``).
"""
