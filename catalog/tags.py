"""Deciding on tag suggestions in bulk: accepted tags become facets and filters and join the full-text vector and
product texts at once (catalog.review.set_status, shared with captions)."""

from __future__ import annotations

from catalog.review import set_status

__all__ = ["set_status"]
