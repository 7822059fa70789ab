"""Matryoshka group sizes, without torch (the co-occurrence summaries use them too)."""

from __future__ import annotations

from itertools import pairwise


def resolve_group_sizes(group_sizes: list[int], width: int) -> list[int]:
    """Individual group sizes from individual or cumulative (strictly increasing, ending at
    ``width``) sizes; errors name what is wrong."""
    sizes = [int(s) for s in group_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"group sizes must be positive integers, got {group_sizes}")
    if sum(sizes) == width:
        return sizes
    if sizes[-1] == width and all(a < b for a, b in pairwise(sizes)):
        return [sizes[0]] + [b - a for a, b in pairwise(sizes)]
    raise ValueError(
        f"group sizes {group_sizes} fit neither form for width {width}: individual sizes must "
        f"sum to {width}; cumulative prefixes must increase and end at {width}"
    )
