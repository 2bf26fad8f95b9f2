"""Planted bugs in the kernel's C: each a one-line edit of the tree kernel-c builds from, in a
copy in the cache. `rmapfuzz selftest --impl kernel-c` fuzzes each and shows whether the
campaign finds it; two are the mistakes the review of the series worried about, and need
it (`--kernel-patch`)."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass

from fuzz.engine.campaign import SelftestRow, run_default_campaign
from fuzz.errors import UsageError
from fuzz.kernel.guest import cache_dir

from .extract import INTERNAL_H, RMAP_C, RMAP_H
from .series import KERNEL_PATCH_ENV
from .source import KERNEL_TREE_ENV, SOURCE_FILES, kernel_tree

PMD_HEAD_ONLY = "if (level == PGTABLE_LEVEL_PMD)\n nr_pages = 1;\n"   # the series' PMD special case


@dataclass(frozen=True)
class Plant:
    """A bug planted by replacing old with new in path."""

    name: str
    path: str
    old: str
    new: str
    needs_series: bool = False


PLANTS: tuple[Plant, ...] = (
    # The series: the PMD level's `nr_pages = 1` written so that every PTE batch gets 0,
    # which then reaches ClearPagesAnonExclusive's `for (;;) ... if (--nr == 0)` loop.
    Plant("share_nr_pages_zero", RMAP_H, PMD_HEAD_ONLY, "nr_pages = level == PGTABLE_LEVEL_PMD;\n", True),
    # The series: the PMD path clears every subpage's bit instead of the head's only.
    Plant("share_pmd_clears_subpages", RMAP_H, PMD_HEAD_ONLY, "", True),
    # A second process taking slot 1 no longer marks the folio maybe mapped shared.
    Plant("mm_id_slot1_not_shared", RMAP_H,
          "\t\t/* Slot 0 certainly has mappings as well. */\n\t\tfolio->_mm_ids |= FOLIO_MM_IDS_SHARED_BIT;\n", ""),
    # fork's PTE dup checks only the first page of a batch for PageAnonExclusive.
    Plant("dup_pin_check_first_page_only", RMAP_H,
          "\t\t\tfor (i = 0; i < nr_pages; i++)\n\t\t\t\tif (PageAnonExclusive(page + i))",
          "\t\t\tfor (i = 0; i < 1; i++)\n\t\t\t\tif (PageAnonExclusive(page + i))"),
)
PLANTS += (
    # Removing PTE mappings forgets _nr_pages_mapped: the kernel's own state goes stale, which
    # the bridge checks against the mapcounts on the way out.
    Plant("remove_rmap_keeps_nr_pages_mapped", RMAP_C, "atomic_sub_return_relaxed(last, mapped) < ENTIRELY_MAPPED",
          "atomic_read(mapped) < ENTIRELY_MAPPED"),
)
PLANTS += (
    # folio_pte_batch_flags() no longer limits max_nr to the folio: a batch runs on into the
    # next folio when its pfns and bits continue (the bug class of batch_crosses_folio_end).
    Plant("pte_batch_ignores_folio_end", INTERNAL_H,
          "max_nr = min_t(unsigned long, max_nr,\n\t\t       folio_pfn(folio) + folio_nr_pages(folio) - pte_pfn(pte));",
          ""),
)
PLANT_NAMES = tuple(plant.name for plant in PLANTS)


def planted_tree(plant: Plant, tree: str) -> str:
    """A copy of tree's files with plant applied, in the cache; UsageError if the text to
    replace is not in the tree (the tree moved, or the plant needs the series)."""
    path = os.path.join(tree, plant.path)
    with open(path, encoding="utf-8") as stream:
        text = stream.read()
    if plant.old not in text:
        raise UsageError(f"plant {plant.name}: {plant.path} of {tree} has no {plant.old.strip()!r}")
    digest = hashlib.sha256(f"{plant.name}\0{tree}\0{text}".encode()).hexdigest()[:16]
    root = os.path.join(cache_dir(), "kernelc-plants", f"{plant.name}-{digest}")
    if os.path.isdir(root):
        return root
    partial = f"{root}.{os.getpid()}"
    for name in SOURCE_FILES:
        os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
        shutil.copyfile(os.path.join(tree, name), os.path.join(partial, name))
    with open(os.path.join(partial, plant.path), "w", encoding="utf-8") as stream:
        stream.write(text.replace(plant.old, plant.new, 1))
    try:
        os.replace(partial, root)
    except OSError:              # another process made it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return root


def selftest(budget: int, names: list[str] | None = None) -> list[SelftestRow]:
    """Fuzz kernel-c built from each planted tree for at most budget seconds, stopping at
    the first finding. A plant that needs the series is skipped (not found, no executions)
    when the tree does not have it."""
    unknown = [name for name in names or [] if name not in PLANT_NAMES]
    if unknown:
        raise UsageError(f"unknown plant {unknown[0]!r} (known: {', '.join(PLANT_NAMES)})")
    tree = kernel_tree()
    saved = {name: os.environ.get(name) for name in (KERNEL_TREE_ENV, KERNEL_PATCH_ENV)}
    rows = []
    try:
        for plant in PLANTS:
            if names and plant.name not in names:
                continue
            try:
                os.environ[KERNEL_TREE_ENV] = planted_tree(plant, tree)
            except UsageError:
                if not plant.needs_series:
                    raise
                rows.append(SelftestRow(plant.name, False, 0.0, 0, None, None))
                continue
            os.environ.pop(KERNEL_PATCH_ENV, None)   # the planted tree is patched already
            summary = run_default_campaign("kernel-c", budget, stop_on_finding=True)
            first = summary.findings[0] if summary.findings else None
            rows.append(SelftestRow(plant.name, True, first.seconds, first.executions, first.ops, first.signature)
                        if first else SelftestRow(plant.name, False, summary.seconds, summary.executions, None, None))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return rows
