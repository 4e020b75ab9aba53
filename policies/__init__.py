"""Ecovisor policies."""
