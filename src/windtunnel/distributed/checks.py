"""Combinations of the `distributed` block that the recipe schema allows but the strategies do not.

The rules live with the rest of the recipe validation (validation.py); this is their entry point for
recipes changed in code after loading (dataclasses.replace skips validation).
"""
from __future__ import annotations

from ..validation import check_distributed

__all__ = ["check_distributed"]
