"""Turning what people type into a class index: one lookup for the API, the CLI and widgets.

Accepted, in this order (case, spaces and underscores ignored):

1. an index, as an int or as text (``281``, ``"281"``);
2. the labels the widgets show, ``"tabby (281)"`` or ``"★ tabby (281)"`` (the index wins);
3. a class name (``"Tiger_Cat"``);
4. whole words of class names (``"cat"``: the four cat classes, not ``crate``);
5. the start of a name, then any part of one (``"shutt"``).

A step that matches one class returns it; one that matches several raises
:class:`AmbiguousClass` listing them; text that matches nothing raises :class:`UnknownClass`
with the closest names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch

__all__ = ["AmbiguousClass", "UnknownClass", "class_index"]

_LABEL = re.compile(r"^\s*(?:★\s*)?(?P<name>.*?)\s*\((?P<index>\d+)\)\s*$")


class UnknownClass(LookupError):
    """No class matches; ``suggestions`` holds the closest class indices."""

    def __init__(self, message: str, suggestions: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)


class AmbiguousClass(LookupError):
    """Several classes match; ``candidates`` holds their indices."""

    def __init__(self, message: str, candidates: Sequence[int]) -> None:
        super().__init__(message)
        self.candidates = list(candidates)


def _norm(text: str) -> str:
    return " ".join(text.replace("_", " ").replace("-", " ").lower().split())


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.lower())


def class_index(class_names: Sequence[str], target) -> int:
    """The index of ``target`` (an index, a label or a name; see the module) in ``class_names``.

    Raises:
        TypeError: ``target`` is neither an integer nor a string.
        UnknownClass: an index out of range, or text that matches no class (a ``LookupError``).
        AmbiguousClass: text that matches several classes (a ``LookupError``).
    """
    n = len(class_names)
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = int(target.item())
    elif hasattr(target, "__index__") and not isinstance(target, (bool, str)):
        target = int(target.__index__())
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise TypeError(
            f"target must be a class index, a class name or None, got {target!r} ({type(target).__name__})"
        )
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target.strip())
    if isinstance(target, int):
        if not 0 <= target < n:
            raise UnknownClass(f"target={target} is out of range: the model has {n} classes (0..{n - 1})")
        return target
    label = _LABEL.match(target)
    if label and int(label["index"]) < n:
        return int(label["index"])
    query = _norm(target)
    if not query:
        raise UnknownClass(f"target={target!r} is empty; type a class name or index")
    names = [_norm(c) for c in class_names]
    words = _words(query)
    steps = (
        lambda c: c == query,
        lambda c: _has_words(_words(c), words),
        lambda c: c.startswith(query),
        lambda c: query in c,
    )
    for step in steps:
        hits = [i for i, c in enumerate(names) if step(c)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            shown = ", ".join(f"{class_names[i]} ({i})" for i in hits[:12])
            more = f" and {len(hits) - 12} more" if len(hits) > 12 else ""
            raise AmbiguousClass(f"target={target!r} matches {len(hits)} classes: {shown}{more}; pick one", hits)
    close = difflib.get_close_matches(query, names, n=5, cutoff=0.5)
    suggestions = [names.index(c) for c in close]
    raise UnknownClass(
        f"target={target!r} is not a class name of this model; closest: {[class_names[i] for i in suggestions]}",
        suggestions,
    )


def _has_words(name_words: list[str], query_words: list[str]) -> bool:
    """Whether the query's words appear, in order and adjacent, among the name's words."""
    k = len(query_words)
    return any(name_words[i : i + k] == query_words for i in range(len(name_words) - k + 1))
