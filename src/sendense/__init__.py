"""Sendense: VM backup platform (hub, node, tunnel)."""

__version__ = "0.1.0"
