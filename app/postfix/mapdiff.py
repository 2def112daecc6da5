"""A unified diff of two versions of one map, in time linear in the map's size.

difflib compares every line with every candidate match: a one-domain change among 100,000
sender domains took it 0.4 s, more than the rest of an Apply. Our maps are written sorted, one
line per key, so the lines only one version holds are all the diff there is: a merge of the two
finds them, comparing the long runs they share a block at a time. A map that is not sorted
(mynetworks keeps the node's own addresses first) goes to difflib; it holds a handful of lines.
The output is difflib.unified_diff's format with n lines of context."""

from __future__ import annotations

import difflib
import itertools
import operator
from collections.abc import Iterator, Sequence

Opcode = tuple[str, int, int, int, int]


def _strictly_sorted(lines: Sequence[str]) -> bool:
    """Sorted and each line once: every line before the next one."""
    return all(map(operator.lt, lines, itertools.islice(lines, 1, None)))


# Runs of lines both versions hold are compared a block at a time (one list comparison in C),
# the block doubling while they agree: a one-domain change among 100,000 is a few hundred
# comparisons of blocks and a few steps of Python, where sets of both versions took 30 ms a map.
_FIRST_BLOCK, _LAST_BLOCK = 4, 4096


def _sorted_opcodes(a: Sequence[str], b: Sequence[str]) -> list[Opcode]:
    """For two strictly sorted lists of lines. The lines both hold are their longest common
    subsequence (nothing shorter keeps every shared line in order), so the diff is the lines
    only one of them holds: a merge of the two, as difflib spells its opcodes."""
    codes: list[Opcode] = []

    def add(tag: str, i1: int, i2: int, j1: int, j2: int) -> None:
        if codes and codes[-1][0] == tag == "equal":
            codes[-1] = ("equal", codes[-1][1], i2, codes[-1][3], j2)
        elif codes and codes[-1][0] != "equal" and tag != "equal":
            # The change goes on: one opcode, as in difflib.
            _, i1, _, j1, _ = codes[-1]
            codes[-1] = ("replace" if i2 > i1 and j2 > j1 else tag, i1, i2, j1, j2)
        else:
            codes.append((tag, i1, i2, j1, j2))

    i = j = 0
    block = _FIRST_BLOCK
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            # Known equal so far; take whole blocks while they agree.
            end_i, end_j = i + 1, j + 1
            while end_i < len(a) and a[end_i : end_i + block] == b[end_j : end_j + block]:
                step = min(block, len(a) - end_i)
                end_i, end_j = end_i + step, end_j + step
                block = min(block * 2, _LAST_BLOCK)
            block = _FIRST_BLOCK
            add("equal", i, end_i, j, end_j)
            i, j = end_i, end_j
        elif a[i] < b[j]:
            add("delete", i, i + 1, j, j)
            i += 1
        else:
            add("insert", i, i, j, j + 1)
            j += 1
    if i < len(a):
        add("delete", i, len(a), j, j)
    if j < len(b):
        add("insert", i, i, j, len(b))
    return codes


def opcodes(a: Sequence[str], b: Sequence[str]) -> Sequence[Opcode]:
    """What turns a into b, as difflib.SequenceMatcher.get_opcodes() spells it."""
    if _strictly_sorted(a) and _strictly_sorted(b):
        return _sorted_opcodes(a, b)
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
