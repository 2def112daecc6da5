"""A unified diff of two versions of one map, in time linear in the map's size.

difflib compares every line with every candidate match: a one-domain change among 100,000
sender domains took it 0.4 s, more than the rest of an Apply. Our maps are written sorted, one
line per key, so the lines only one version holds are all the diff there is: sets find them, and
bisection finds where each one goes. A map that is not sorted (mynetworks keeps the node's own
addresses first) goes to difflib; it holds a handful of lines. The output is
difflib.unified_diff's format with n lines of context."""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Iterator, Sequence

Opcode = tuple[str, int, int, int, int]


def _sorted_and_distinct(lines: Sequence[str], distinct: set[str]) -> bool:
    return len(distinct) == len(lines) and sorted(lines) == lines


def _sorted_opcodes(
    a: Sequence[str], b: Sequence[str], in_a: set[str], in_b: set[str]
) -> list[Opcode]:
    """For two sorted lists of distinct lines. The lines both hold are their longest common
    subsequence (nothing shorter keeps every shared line in order), so the diff is the lines
    only one of them holds, each found at its place by bisection: set operations and a few
    lookups per changed line, where a line-by-line merge is a Python step per line."""
    codes: list[Opcode] = []
    i = j = 0
    for line in sorted((in_a - in_b) | (in_b - in_a)):
        removed = line in in_a
        at_a, at_b = bisect.bisect_left(a, line), bisect.bisect_left(b, line)
        if at_a > i:  # the lines kept since the last change (as many in a as in b)
            codes.append(("equal", i, at_a, j, at_b))
        i, j = (at_a + 1, at_b) if removed else (at_a, at_b + 1)
        if codes and codes[-1][0] != "equal":  # the change goes on: one opcode, as in difflib
            tag, i1, _, j1, _ = codes[-1]
            codes[-1] = ("replace" if i > i1 and j > j1 else tag, i1, i, j1, j)
        else:
            codes.append(("delete" if removed else "insert", at_a, i, at_b, j))
    if i < len(a):
        codes.append(("equal", i, len(a), j, len(b)))
    return codes


def opcodes(a: Sequence[str], b: Sequence[str]) -> Sequence[Opcode]:
    """What turns a into b, as difflib.SequenceMatcher.get_opcodes() spells it."""
    in_a, in_b = set(a), set(b)
    if _sorted_and_distinct(a, in_a) and _sorted_and_distinct(b, in_b):
        return _sorted_opcodes(a, b, in_a, in_b)
    return difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()


class _Found(difflib.SequenceMatcher):
    """difflib's grouping of opcodes into hunks (get_grouped_opcodes), over opcodes found
    without it."""

    def __init__(self, codes: Sequence[Opcode]) -> None:
        super().__init__(None, "", "")
        self.codes = codes

    def get_opcodes(self) -> list[Opcode]:  # type: ignore[override]
        return list(self.codes)  # grouping rewrites the first and last in place


def _range(start: int, stop: int) -> str:
    """A hunk's line range in unified-diff form: 1-based, the length left out when it is 1."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start + 1 if length else start},{length}"


def unified(
    a: Sequence[str], b: Sequence[str], fromfile: str, tofile: str, n: int = 3
) -> Iterator[str]:
    """difflib.unified_diff(a, b, fromfile, tofile, n=n, lineterm="")."""
    started = False
    for hunk in _Found(opcodes(a, b)).get_grouped_opcodes(n):
        if not started:
            started = True
            yield f"--- {fromfile}"
            yield f"+++ {tofile}"
        first, last = hunk[0], hunk[-1]
        yield f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@"
        for tag, i1, i2, j1, j2 in hunk:
            if tag == "equal":
                yield from (" " + line for line in a[i1:i2])
                continue
            if tag in ("replace", "delete"):
                yield from ("-" + line for line in a[i1:i2])
            if tag in ("replace", "insert"):
                yield from ("+" + line for line in b[j1:j2])
