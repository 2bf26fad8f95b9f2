"""Whole-array truth tests without numpy's Python-level wrappers.

`ndarray.any()` and `.all()` go through numpy's Python `_methods` layer (and
convert integer arrays to bool first); `np.count_nonzero` is one C call, several
times cheaper on the small arrays the page-table code tests thousands of times.
"""

from __future__ import annotations

import numpy as np


def any_set(values: np.ndarray) -> bool:
    """values.any(): some element is non-zero (true)."""
    return np.count_nonzero(values) != 0


def all_set(values: np.ndarray) -> bool:
    """values.all(): every element is non-zero (true)."""
    return np.count_nonzero(values) == np.size(values)
