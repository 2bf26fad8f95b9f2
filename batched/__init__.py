"""The batched implementation: runs of PTEs handled with numpy, as the kernel's batched paths."""

from .kernel import Kernel

__all__ = ["Kernel"]
