"""Cursor pagination by id, with OpenAI's semantics: `after`/`before` are ids (which sort by creation
time, so a cursor whose object was deleted meanwhile still works), `limit`, `order`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class Cursor:
    after: str | None = None
    before: str | None = None
    limit: int = 20
    order: Order = "desc"

    def __post_init__(self) -> None:
        # `?after=` (an empty value) means no cursor, as OpenAI and this server before took it
        object.__setattr__(self, "after", self.after or None)
        object.__setattr__(self, "before", self.before or None)


@dataclass(slots=True)
class Page(Generic[T]):
    data: list[T]
    has_more: bool


def paged(items: Sequence[T], cursor: Cursor, id_of: Callable[[T], str]) -> Page[T]:
    """The page of `items` (oldest first) at `cursor`. With `before`, the page is the items
    nearest to it, still in the list's order."""
    asc = cursor.order == "asc"
    seq = list(items) if asc else list(items)[::-1]
    if cursor.after:
        after = cursor.after
        seq = [i for i in seq if (id_of(i) > after if asc else id_of(i) < after)]
    if cursor.before:
        before = cursor.before
        seq = [i for i in seq if (id_of(i) < before if asc else id_of(i) > before)]
        data = seq[-cursor.limit:] if cursor.limit else []
    else:
        data = seq[:cursor.limit]
    return Page(data, len(seq) > cursor.limit)
