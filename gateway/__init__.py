"""Sluice: an SLO-aware gateway in front of a fleet of vLLM servers."""

__version__ = "0.1.0"
