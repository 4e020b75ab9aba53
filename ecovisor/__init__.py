"""Ecovisor: a virtual energy system for carbon-efficient applications.

Units everywhere (see docs/units.md): power in W, energy in Wh or J at the edges and
integer millijoules (mJ) inside the ledger, carbon intensity in gCO2eq/kWh, carbon in g
at the edges and integer micrograms (µg) inside the ledger.
"""

__version__ = "0.1.0"
