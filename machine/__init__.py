"""The simulated arm64 page-table machine shared by reference/ and batched/ (SPEC §2)."""

from .arrays import all_set, any_set
from .errors import MachineBug, check
from .frames import FREE_FOLIO, MM_ID_DUMMY, FrameTable
from .journal import Journal
from .machine import DEFAULT_NR_FRAMES, Machine, Pin, PteRuns
from .mm import MM, VMA
from .swap import SwapSpace

__all__ = ["Machine", "Journal", "Pin", "PteRuns", "MM", "VMA", "FrameTable", "SwapSpace", "MachineBug", "check",
           "FREE_FOLIO", "MM_ID_DUMMY", "DEFAULT_NR_FRAMES", "all_set", "any_set"]
