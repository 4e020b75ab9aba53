"""Ecovisor collectors."""
