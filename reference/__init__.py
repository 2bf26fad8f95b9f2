"""The naive per-page reference implementation: the oracle rmapfuzz judges batched code by."""

from .kernel import Kernel

__all__ = ["Kernel"]
