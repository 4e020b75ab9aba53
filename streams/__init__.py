"""Ecovisor streams."""
