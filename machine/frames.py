"""Physical frames: per-page and per-folio metadata in numpy arrays, and the allocator.

Folio fields live at the head pfn's index (the kernel keeps them in the head
and first tail pages); for other pages they stay at their free values. Every
count is a plain count (the kernel's accessor values, never its -1 offsets).
"""

from __future__ import annotations

import numpy as np

from .arrays import all_set, any_set
from .errors import MachineBug, check

MM_ID_DUMMY = 0
FREE_FOLIO = -1
FREE_BLOCK_FRAMES = 512  # the allocator's index counts free frames per block of the largest order
HUGE_ZERO_NR_PAGES = 512  # the huge zero folio: one PMD's worth of zero pages


class FrameTable:
    """struct page / struct folio for nr_frames 4 KiB frames, and the reserved frames after them.

    The reserved frames are the kernel's shared zero page (`zero_pfn`, ZERO_PAGE(0)) and
    huge zero folio (`huge_zero_pfn`, 512 frames, PMD-aligned): never allocated, their
    data 0, each its own folio (page_folio, folio_order) with every count at 0. No kernel
    path changes a field of theirs (a zero-page PTE is special: vm_normal_page() is NULL,
    so no rmap, refcount or counter); frames between nr_frames and huge_zero_pfn are padding.
    """

    ARRAYS = (
        "page_mapcount", "page_anon_exclusive", "page_folio", "page_data",
        "folio_order", "folio_refcount", "folio_large_mapcount", "folio_entire_mapcount",
        "folio_pincount", "folio_mm_id", "folio_mm_id_mapcount", "folio_mm_ids_shared",
        "folio_anon", "folio_swapbacked", "folio_dirty", "folio_index", "folio_lineage",
        "folio_mapping", "folio_swap",
    )

    def __init__(self, nr_frames: int) -> None:
        check(nr_frames >= 1, "nr_frames must be positive")
        self.nr_frames = nr_frames
        self.huge_zero_pfn = -(-nr_frames // HUGE_ZERO_NR_PAGES) * HUGE_ZERO_NR_PAGES
        self.zero_pfn = self.huge_zero_pfn + HUGE_ZERO_NR_PAGES
        size = self.zero_pfn + 1  # every frame, reserved ones included
        # Per page.
        self.page_mapcount = np.zeros(size, np.int32)        # PTE mappings of this page
        self.page_anon_exclusive = np.zeros(size, np.bool_)  # PG_anon_exclusive
        self.page_folio = np.full(size, FREE_FOLIO, np.int64)  # head pfn, -1 when free
        self.page_data = np.zeros(size, np.uint64)           # the page's data word
        # Per folio, at the head's index.
        self.folio_order = np.zeros(size, np.int8)
        self.folio_refcount = np.zeros(size, np.int64)
        self.folio_large_mapcount = np.zeros(size, np.int32)
        self.folio_entire_mapcount = np.zeros(size, np.int32)
        self.folio_pincount = np.zeros(size, np.int32)
        self.folio_mm_id = np.zeros((size, 2), np.int32)
        self.folio_mm_id_mapcount = np.zeros((size, 2), np.int32)
        self.folio_mm_ids_shared = np.zeros(size, np.bool_)  # "maybe mapped shared"
        self.folio_anon = np.zeros(size, np.bool_)           # PageAnon
        self.folio_swapbacked = np.zeros(size, np.bool_)     # PG_swapbacked: clear on an anon folio = lazyfree
        self.folio_dirty = np.zeros(size, np.bool_)          # PG_dirty
        self.folio_index = np.zeros(size, np.int64)
        self.folio_lineage = np.zeros(size, np.int32)
        self.folio_mapping = np.zeros(size, np.int32)        # page cache: file id + 1, 0 for none
        self.folio_swap = np.zeros(size, np.int64)           # folio->swap: first slot in the swap cache,
        #                                                      0 for none (PG_swapcache; slot 0 is never used)
        # The reserved frames: the zero page and the huge zero folio, each a folio of its own.
        self.page_folio[self.huge_zero_pfn:self.zero_pfn] = self.huge_zero_pfn
        self.folio_order[self.huge_zero_pfn] = 9
        self.page_folio[self.zero_pfn] = self.zero_pfn
        # The allocator's index: free frames per block of FREE_BLOCK_FRAMES, kept in step
        # with page_folio by every method that allocates or frees.
        nr_blocks = -(-nr_frames // FREE_BLOCK_FRAMES)
        self.block_nr_free = np.full(nr_blocks, FREE_BLOCK_FRAMES, np.int64)
        self.block_nr_free[-1] = nr_frames - (nr_blocks - 1) * FREE_BLOCK_FRAMES
        self.nr_free_frames = nr_frames
        self.first_free_block = 0  # a search hint: every block below it is full

    def clone(self) -> FrameTable:
        other = FrameTable.__new__(FrameTable)
        other.nr_frames = self.nr_frames
        other.huge_zero_pfn = self.huge_zero_pfn
        other.zero_pfn = self.zero_pfn
        for name in self.ARRAYS:
            setattr(other, name, getattr(self, name).copy())
        other.block_nr_free = self.block_nr_free.copy()
        other.nr_free_frames = self.nr_free_frames
        other.first_free_block = self.first_free_block
        return other

    # Queries used by both implementations.

    def folio_nr_pages(self, folio: int) -> int:
        return 1 << self.folio_order.item(folio)

    def is_zero_pfn(self, pfn: int | np.ndarray) -> bool | np.ndarray:
        """The shared zero page or a page of the huge zero folio (is_zero_pfn, is_huge_zero_pfn);
        works on an int or a numpy array of pfns."""
        return (pfn >= self.huge_zero_pfn) & (pfn <= self.zero_pfn)

    def reserved_value(self, name: str) -> np.ndarray:
        """What field name holds at every frame from nr_frames on, as __init__ set it: padding
        free, the huge zero folio and the zero page each a folio of their own, nothing else set."""
        array = getattr(self, name)
        expected = np.zeros_like(array[self.nr_frames:])
        if name == "page_folio":
            expected[:] = FREE_FOLIO
            expected[self.huge_zero_pfn - self.nr_frames:-1] = self.huge_zero_pfn
            expected[-1] = self.zero_pfn
        elif name == "folio_order":
            expected[self.huge_zero_pfn - self.nr_frames] = 9
        return expected

    def reserved_frames_changed(self) -> list[tuple[int, str]]:
        """(pfn, field) of every field of a frame beyond nr_frames that is not as __init__ set
        it: the zero page and huge zero folio are never taken for a folio of the allocator's."""
        changed = []
        for name in self.ARRAYS:
            differs = getattr(self, name)[self.nr_frames:] != self.reserved_value(name)
            if differs.ndim > 1:
                differs = differs.any(axis=1)
            changed += [(self.nr_frames + int(i), name) for i in np.flatnonzero(differs)]
        return sorted(changed)

    def page_folio_of(self, page: int) -> int:
        folio = self.page_folio.item(page)
        check(folio != FREE_FOLIO, "pfn %s is not allocated", page)
        return folio

    # The allocator: lowest naturally aligned run of free frames.

    def _lowest_block_with_free_frames(self) -> int:
        """The lowest block holding a free frame (some frame is free)."""
        block = self.first_free_block
        if self.block_nr_free[block] == 0:
            block += int((self.block_nr_free[block:] > 0).argmax())
            self.first_free_block = block
        check(self.block_nr_free[block] > 0, "no block with a free frame")
        return block

    def find_free_run(self, order: int) -> int | None:
        """The pfn of the lowest naturally aligned run of 2**order free frames.

        Only blocks whose free count could hold the run are looked into, lowest first.
        """
        if self.nr_free_frames == 0:
            return None
        first = self._lowest_block_with_free_frames()
        nr_pages = 1 << order
        if nr_pages == 1:  # any block with a free frame will do: the lowest
            start = first * FREE_BLOCK_FRAMES  # FREE_FOLIO is below every head pfn: the first minimum
            end = min(start + FREE_BLOCK_FRAMES, self.nr_frames)  # never the padding before the reserved frames
            return start + int(self.page_folio[start:end].argmin())
        if self.block_nr_free[first] >= nr_pages:  # the lowest block with room usually fits
            pfn = self._free_run_in_block(first, nr_pages)
            if pfn is not None:
                return pfn
        for block in np.flatnonzero(self.block_nr_free[first + 1:] >= nr_pages):  # lazily
            pfn = self._free_run_in_block(int(block) + first + 1, nr_pages)
            if pfn is not None:
                return pfn
        return None

    def _free_run_in_block(self, block: int, nr_pages: int) -> int | None:
        """The lowest naturally aligned run of nr_pages free frames inside block, or None."""
        start = block * FREE_BLOCK_FRAMES
        end = min(start + FREE_BLOCK_FRAMES, self.nr_frames)
        end -= (end - start) % nr_pages
        if end == start:
            return None
        # A run is free when its highest entry is FREE_FOLIO, the lowest value there is.
        run_max = np.maximum.reduce(self.page_folio[start:end].reshape(-1, nr_pages), axis=1)
        run = int(run_max.argmin())
        return start + run * nr_pages if run_max[run] == FREE_FOLIO else None

    def find_free_frames(self, nr_pages: int) -> np.ndarray | None:
        """The nr_pages lowest free frames, ascending (what nr_pages order-0 allocations
        in a row would return when nothing is freed between them), or None if too few."""
        check(nr_pages >= 0, "negative frame count")
        if nr_pages > self.nr_free_frames:
            return None
        if nr_pages == 0:
            return np.zeros(0, np.int64)
        first = self._lowest_block_with_free_frames()
        found = []
        needed = nr_pages
        for block in np.flatnonzero(self.block_nr_free[first:] > 0):
            if needed == 0:
                break
            start = (int(block) + first) * FREE_BLOCK_FRAMES
            end = min(start + FREE_BLOCK_FRAMES, self.nr_frames)
            free = np.flatnonzero(self.page_folio[start:end] == FREE_FOLIO)[:needed]
            found.append(free + start)
            needed -= len(free)
        return np.concatenate(found)

    def folio_alloc(self, order: int) -> int | None:
        """Allocate a folio of 2**order frames; returns its head pfn with refcount 1.

        History-independent: the result depends only on which frames are free.
        """
        check(0 <= order <= 9 and order != 1, "bad folio order %s", order)
        folio = self.find_free_run(order)
        if folio is None:
            return None
        self._folio_set_frames_one(folio, order)
        self.folio_refcount[folio] = 1
        return folio

    def folios_alloc_order0(self, nr_folios: int) -> np.ndarray | None:
        """nr_folios order-0 folios at the lowest free frames, ascending, each with refcount 1;
        None (nothing allocated) if fewer frames are free."""
        folios = self.find_free_frames(nr_folios)
        if folios is None:
            return None
        self.folio_set_frames(folios, 0)
        self.folio_refcount[folios] = 1
        return folios

    def folio_set_frames(self, heads: np.ndarray, order: int) -> None:
        """Make the free frames from each head a folio of 2**order pages (allocation and
        folio split); every other field stays at its free value."""
        heads = np.asarray(heads, np.int64)
        nr_pages = 1 << order
        if len(heads) == 1:
            self._folio_set_frames_one(int(heads[0]), order)
            return
        pages = (heads[:, None] + np.arange(nr_pages)).reshape(-1)
        check(heads.size == 0 or (heads.min() >= 0 and pages.max() < self.nr_frames),
              "folio outside the frames")
        check(all_set(self.page_folio[pages] == FREE_FOLIO), "folio made of allocated frames")
        self.page_folio[pages] = heads.repeat(nr_pages)
        self.folio_order[heads] = order
        self._account_frames(pages, -1)

    def _folio_set_frames_one(self, head: int, order: int) -> None:
        """folio_set_frames for one folio, with plain ints."""
        nr_pages = 1 << order
        check(head >= 0 and head + nr_pages <= self.nr_frames, "folio outside the frames")
        if nr_pages == 1:
            check(self.page_folio[head] == FREE_FOLIO, "folio made of allocated frames")
            self.page_folio[head] = head
        else:
            check(all_set(self.page_folio[head:head + nr_pages] == FREE_FOLIO), "folio made of allocated frames")
            self.page_folio[head:head + nr_pages] = head
        self.folio_order[head] = order
        self._account_block(head // FREE_BLOCK_FRAMES, -nr_pages)  # aligned: inside one block

    def folio_free(self, folio: int) -> None:
        """Return a folio's frames to the allocator, every field at its free value (folios_free
        for one folio, read as scalars)."""
        check(self.page_folio.item(folio) == folio, "freeing non-heads")
        check(self.folio_refcount.item(folio) == 0, "freeing folios with references")
        check(self.folio_large_mapcount.item(folio) == 0 and self.folio_pincount.item(folio) == 0,
              "freeing folios that are mapped or pinned")
        self._clear_folio_frames(folio)

    def folios_free(self, folios: np.ndarray) -> None:
        """folio_free for several folios at once (all unreferenced, unmapped and unpinned)."""
        folios = np.asarray(folios, np.int64)
        if folios.size == 0:
            return
        if folios.size == 1:
            self.folio_free(int(folios[0]))   # its checks as scalars
            return
        check(all_set(self.page_folio[folios] == folios), "freeing non-heads")
        check(not any_set(self.folio_refcount[folios]), "freeing folios with references")
        check(not any_set(self.folio_large_mapcount[folios]) and not any_set(self.folio_pincount[folios]),
              "freeing folios that are mapped or pinned")
        nr_pages = 1 << self.folio_order[folios].astype(np.int64)
        pages = folios.repeat(nr_pages) + _segment_offsets(nr_pages)
        check(not any_set(self.page_mapcount[pages]), "freeing folios with mapped pages")
        self._clear_pages(pages)

    def _clear_folio_frames(self, folio: int) -> None:
        """_clear_pages for one folio's frames, as a slice."""
        nr_pages = 1 << self.folio_order.item(folio)
        frames = slice(folio, folio + nr_pages) if nr_pages > 1 else folio   # an int index costs half
        check(not any_set(self.page_mapcount[frames]), "freeing folios with mapped pages")
        self._reset_fields(frames)
        self._account_block(folio // FREE_BLOCK_FRAMES, nr_pages)  # aligned: inside one block

    def clear_frames(self, pfn: int, nr_pages: int) -> None:
        """Reset nr_pages frames to their free values (free or split leftovers)."""
        self._clear_pages(np.arange(pfn, pfn + nr_pages))

    def _clear_pages(self, pages: np.ndarray) -> None:
        allocated = pages[self.page_folio[pages] != FREE_FOLIO]
        self._reset_fields(pages)
        self._account_frames(allocated, +1)

    def _reset_fields(self, pages: np.ndarray | slice | int) -> None:
        """Every field of pages at its free value."""
        for name in self.ARRAYS:
            getattr(self, name)[pages] = FREE_FOLIO if name == "page_folio" else 0

    def _account_frames(self, pages: np.ndarray, delta: int) -> None:
        """Keep the allocator's index in step: pages became free (+1) or allocated (-1)."""
        if len(pages) == 0:
            return
        block = int(pages.min()) // FREE_BLOCK_FRAMES
        if block == int(pages.max()) // FREE_BLOCK_FRAMES:
            self._account_block(block, delta * len(pages))  # all in one block
            return
        np.add.at(self.block_nr_free, pages // FREE_BLOCK_FRAMES, delta)
        self.nr_free_frames += delta * len(pages)
        if delta > 0:
            self.first_free_block = min(self.first_free_block, block)

    def _account_block(self, block: int, nr_freed: int) -> None:
        """nr_freed frames of block became free (negative: allocated)."""
        self.block_nr_free[block] += nr_freed
        self.nr_free_frames += nr_freed
        if nr_freed > 0:
            self.first_free_block = min(self.first_free_block, block)

    def is_free(self, page: int) -> bool:
        return self.page_folio.item(page) == FREE_FOLIO


def _segment_offsets(nr_pages: np.ndarray) -> np.ndarray:
    """0..nr_pages[i]-1 for each segment i, concatenated."""
    ends = nr_pages.cumsum()
    return np.arange(ends[-1] if len(ends) else 0) - (ends - nr_pages).repeat(nr_pages)


__all__ = ["FrameTable", "MM_ID_DUMMY", "FREE_FOLIO", "MachineBug"]
