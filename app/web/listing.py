"""Paging and sorting for the GUI's lists: the page and order a request asks for, held to the
columns a list allows, and the links that keep a list's filters while they change."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from litestar.params import QueryParameter

PAGE_SIZE = 50
# The query parameters of a list: ?sort=COLUMN&dir=asc|desc&page_no=N.
Direction = Annotated[str, QueryParameter(name="dir")]
T = TypeVar("T")


@dataclass(frozen=True)
class Listing:
    """One page of a list: `rows`, `total` (None when counting would cost too much, then
    `has_more` tells whether a next page exists), and what the links need."""

    path: str
    sort: str
    descending: bool
    page_no: int
    size: int
    filters: dict[str, str] = field(default_factory=dict)
    rows: list[Any] = field(default_factory=list)
    total: int | None = None
    has_more: bool = False
    target: str = ""  # the fragment HTMX swaps for a new page or order ("" loads the page)

    @property
    def offset(self) -> int:
        return (self.page_no - 1) * self.size

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, math.ceil(self.total / self.size))

    @property
    def has_next(self) -> bool:
        if self.total is None:
            return self.has_more
        return self.page_no < (self.pages or 1)

    def link(self, page_no: int | None = None, sort: str | None = None) -> str:
        """This list's URL with its filters, another page, or sorted by `sort` (the first page;
        the same column again turns the direction round)."""
        descending = self.descending
        if sort is not None:
            descending = not self.descending if sort == self.sort else False
            page_no = 1
        params = {k: v for k, v in self.filters.items() if v}
        params |= {
            "sort": sort or self.sort,
            "dir": "desc" if descending else "asc",
            "page_no": str(page_no or self.page_no),
        }
        return f"{self.path}?{urlencode(params)}"

    def with_rows(self, rows: list[Any]) -> Listing:
        """The page of `rows` the database gave, uncounted (queried with limit size + 1: one
        more than shown tells that a next page exists)."""
        return replace(self, rows=rows[: self.size], has_more=len(rows) > self.size)

    def of(self, items: Sequence[T], keys: dict[str, Callable[[T], Any]]) -> Listing:
        """A page of a list held in memory, sorted by the key function of `self.sort`."""
        ordered = sorted(items, key=keys[self.sort], reverse=self.descending)
        return replace(
            self, rows=ordered[self.offset : self.offset + self.size], total=len(ordered)
        )


def listing(
    path: str,
    columns: Sequence[str],
    sort: str,
    direction: str,
    page_no: int,
    default: tuple[str, str],
    filters: dict[str, str] | None = None,
    size: int = PAGE_SIZE,
    target: str = "",
) -> Listing:
    """What the request asked for, with an unknown column or direction replaced by the list's
    `default` (column, "asc" or "desc") and a page number below 1 by 1."""
    if sort not in columns:
        sort, direction = default
    if direction not in ("asc", "desc"):
        direction = default[1] if sort == default[0] else "asc"
    return Listing(
        path=path,
        sort=sort,
        descending=direction == "desc",
        page_no=max(page_no, 1),
        size=size,
        filters=filters or {},
        target=target,
    )


def _day(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def days(since: str, until: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The search window of a since/until day filter: from the start of `since` up to the end
    of `until` (both whole UTC days, either may be empty or unreadable: then open)."""
    until_day = _day(until)
    return _day(since), until_day + dt.timedelta(days=1) if until_day else None
