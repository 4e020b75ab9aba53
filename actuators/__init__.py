"""Ecovisor actuators."""
