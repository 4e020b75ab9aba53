"""The ``ecovisor`` command line (typer). Run: ``ecovisor`` or ``python -m ecovisor.cli``."""
