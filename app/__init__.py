"""Offload: a self-hosted service for CPU-heavy work on uploaded files."""

__version__ = "0.1.0"
