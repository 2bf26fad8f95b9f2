"""Files and their page caches (struct address_space): state only, no policy.

A file is a regular file on a disk filesystem (its written-back words on "disk") or a
shmem/tmpfs file (its swapped-out pages as swap entries in the cache). The page cache
maps each page index to the head pfn of the folio holding it (a large folio fills every
index it covers, as the xarray's multi-index entries do) or, for shmem, to a swap slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import check


@dataclass
class File:
    """One file: its size in pages, its kind, its page cache and its backing store."""

    file_id: int
    nr_pages: int
    shmem: bool
    cache: dict[int, int] = field(default_factory=dict)  # index: head pfn of the page-cache folio
    swap: dict[int, int] = field(default_factory=dict)   # shmem index: swap slot holding it
    disk: dict[int, int] = field(default_factory=dict)   # regular index: the word written back (0 if absent)

    def clone(self) -> File:
        return File(self.file_id, self.nr_pages, self.shmem, dict(self.cache), dict(self.swap), dict(self.disk))

    def cache_add(self, index: int, folio: int, nr_pages: int) -> None:
        """Put a folio of nr_pages pages in the cache at index..index + nr_pages - 1."""
        check(index % nr_pages == 0, "page-cache folio at index %s not aligned to %s pages", index, nr_pages)
        check(index >= 0 and index + nr_pages <= self.nr_pages, "page-cache folio beyond the file's end")
        for offset in range(nr_pages):
            check(index + offset not in self.cache and index + offset not in self.swap,
                  "page-cache slot %s of F%s already filled", index + offset, self.file_id)
            self.cache[index + offset] = folio

    def cache_delete(self, index: int, nr_pages: int) -> None:
        """Take the folio at index..index + nr_pages - 1 out of the cache."""
        folio = self.cache.get(index)
        for offset in range(nr_pages):
            check(self.cache.get(index + offset) == folio and folio is not None,
                  "page-cache slot %s of F%s does not hold the folio", index + offset, self.file_id)
            del self.cache[index + offset]


__all__ = ["File"]
