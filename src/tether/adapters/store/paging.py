"""What both stores check before listing a page of objects (see `ObjectStore.list_objects`)."""

from __future__ import annotations


def check_page(limit: int | None, order: str) -> None:
    """Refuse a page no store can serve (the interfaces check their parameters first)."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
