"""Physical frames: per-page and per-folio metadata in numpy arrays, and the allocator.

Folio fields live at the head pfn's index (the kernel keeps them in the head
and first tail pages); for other pages they stay at their free values. Every
count is a plain count (the kernel's accessor values, never its -1 offsets).
"""

from __future__ import annotations

import numpy as np

from .errors import MachineBug, check

MM_ID_DUMMY = 0
FREE_FOLIO = -1


class FrameTable:
    """struct page / struct folio for nr_frames 4 KiB frames."""

    ARRAYS = (
        "page_mapcount", "page_anon_exclusive", "page_folio", "page_data",
        "folio_order", "folio_refcount", "folio_large_mapcount", "folio_entire_mapcount",
        "folio_pincount", "folio_mm_id", "folio_mm_id_mapcount", "folio_mm_ids_shared",
        "folio_anon", "folio_index", "folio_lineage",
    )

    def __init__(self, nr_frames: int) -> None:
        check(nr_frames >= 1, "nr_frames must be positive")
        self.nr_frames = nr_frames
        # Per page.
        self.page_mapcount = np.zeros(nr_frames, np.int32)        # PTE mappings of this page
        self.page_anon_exclusive = np.zeros(nr_frames, np.bool_)  # PG_anon_exclusive
        self.page_folio = np.full(nr_frames, FREE_FOLIO, np.int64)  # head pfn, -1 when free
        self.page_data = np.zeros(nr_frames, np.uint64)           # the page's data word
        # Per folio, at the head's index.
        self.folio_order = np.zeros(nr_frames, np.int8)
        self.folio_refcount = np.zeros(nr_frames, np.int64)
        self.folio_large_mapcount = np.zeros(nr_frames, np.int32)
        self.folio_entire_mapcount = np.zeros(nr_frames, np.int32)
        self.folio_pincount = np.zeros(nr_frames, np.int32)
        self.folio_mm_id = np.zeros((nr_frames, 2), np.int32)
        self.folio_mm_id_mapcount = np.zeros((nr_frames, 2), np.int32)
        self.folio_mm_ids_shared = np.zeros(nr_frames, np.bool_)  # "maybe mapped shared"
        self.folio_anon = np.zeros(nr_frames, np.bool_)           # anon + swapbacked
        self.folio_index = np.zeros(nr_frames, np.int64)
        self.folio_lineage = np.zeros(nr_frames, np.int32)

    def clone(self) -> FrameTable:
        other = FrameTable.__new__(FrameTable)
        other.nr_frames = self.nr_frames
        for name in self.ARRAYS:
            setattr(other, name, getattr(self, name).copy())
        return other

    # Queries used by both implementations.

    def folio_nr_pages(self, folio: int) -> int:
        return 1 << int(self.folio_order[folio])

    def page_folio_of(self, page: int) -> int:
        folio = int(self.page_folio[page])
        check(folio != FREE_FOLIO, f"pfn {page} is not allocated")
        return folio

    # The allocator: lowest naturally aligned run of free frames.

    def find_free_run(self, order: int) -> int | None:
        """The pfn of the lowest naturally aligned run of 2**order free frames."""
        nr_pages = 1 << order
        usable = self.nr_frames - self.nr_frames % nr_pages
        if usable == 0:
            return None
        free_runs = (self.page_folio[:usable] == FREE_FOLIO).reshape(-1, nr_pages).all(axis=1)
        run = int(free_runs.argmax())
        return run * nr_pages if free_runs[run] else None

    def folio_alloc(self, order: int) -> int | None:
        """Allocate a folio of 2**order frames; returns its head pfn with refcount 1.

        History-independent: the result depends only on which frames are free.
        """
        check(0 <= order <= 9 and order != 1, f"bad folio order {order}")
        folio = self.find_free_run(order)
        if folio is None:
            return None
        nr_pages = 1 << order
        self.page_folio[folio:folio + nr_pages] = folio
        self.folio_order[folio] = order
        self.folio_refcount[folio] = 1
        return folio

    def folio_free(self, folio: int) -> None:
        """Return a folio's frames to the allocator, every field at its free value."""
        check(int(self.page_folio[folio]) == folio, f"pfn {folio} is not a folio head")
        check(self.folio_refcount[folio] == 0, f"freeing folio {folio} with references")
        check(self.folio_large_mapcount[folio] == 0 and self.folio_pincount[folio] == 0,
              f"freeing folio {folio} that is mapped or pinned")
        nr_pages = self.folio_nr_pages(folio)
        span = slice(folio, folio + nr_pages)
        check(not self.page_mapcount[span].any(), f"freeing folio {folio} with mapped pages")
        self.clear_frames(folio, nr_pages)

    def clear_frames(self, pfn: int, nr_pages: int) -> None:
        """Reset nr_pages frames to their free values (free or split leftovers)."""
        span = slice(pfn, pfn + nr_pages)
        for name in self.ARRAYS:
            array = getattr(self, name)
            array[span] = FREE_FOLIO if name == "page_folio" else 0

    def is_free(self, page: int) -> bool:
        return int(self.page_folio[page]) == FREE_FOLIO


__all__ = ["FrameTable", "MM_ID_DUMMY", "FREE_FOLIO", "MachineBug"]
