"""Did-you-mean suggestions: only names that are spellings of one another (case, separators, a typo or two)."""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["similar_names", "spelling_distance"]

_VERSION = re.compile(r"v?\d+")


def _plain(name: str) -> str:
    return re.sub(r"[-_.\s/:]", "", name.lower())


def spelling_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) between ``a`` and ``b`` once case and the
    separators ``- _ . / :`` are ignored (optimal string alignment distance)."""
    a, b = _plain(a), _plain(b)
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if prev2 is not None and i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def similar_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` that are spellings of ``name``, closest first.

    A choice qualifies when it differs by at most one edit (names of up to 5 letters) or two edits (longer
    names), after ignoring case and separators: ``uni-v1`` -> ``uni_v1``, ``virchw2`` -> ``virchow2``; a
    different model that merely shares a word (``midnight12k`` vs ``openmidnight``) does not.
    """
    plain = _plain(name)
    limit = 1 if len(plain) <= 5 else 2
    scored = []
    for choice in dict.fromkeys(choices):
        other = _plain(choice)
        if other.startswith(plain) and plain and _VERSION.fullmatch(other[len(plain):]):
            scored.append((1, choice))  # the name without its version / size suffix: conch -> conch_v1
        elif abs(len(other) - len(plain)) <= limit and (d := spelling_distance(name, choice)) <= limit:
            scored.append((d, choice))
    if any(d == 0 for d, _ in scored):
        scored = [t for t in scored if t[0] == 0]  # the same name written differently: nothing else
    ratio = lambda c: difflib.SequenceMatcher(None, plain, _plain(c)).ratio()  # ties: the closer-looking first
    return [c for _, c in sorted(scored, key=lambda t: (t[0], -ratio(t[1])))[:n]]
