"""Verzilvering media server: SFU, application wiring and the `verzilvering` command."""

__version__ = "0.1.0"
