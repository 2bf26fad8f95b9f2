"""Planted bugs: small variants of batched/ that each reintroduce one real bug class.

Each canary module loads its own independent copy of the `batched` package
(so planting never touches the real one) and replaces one function in it with
a variant carrying the bug; `Kernel` is the planted copy's kernel. The
self-test fuzzes every canary and shows that the general campaign finds and
minimises it (issue: no seed, dictionary or decoder bias may spell one out).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import FunctionType, ModuleType

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent

CANARIES = (
    "pmd_dup_checks_subpages",
    "dup_clears_first_page_only",
    "share_nr_pages_zero",
    "batch_crosses_pte_table",
    "batch_crosses_vma_end",
    "batch_crosses_folio_end",
    "pin_check_on_page",
    "unmap_batch_mixed_exclusive",
    "swap_exclusive_first_only",
    "large_mapcount_per_batch",
    "folio_ref_per_batch",
    "fork_wrprotect_first_only",
    "fork_swap_exclusive_child_only",
    "pmd_split_drops_exclusive",
    "thp_swpout_no_fallback",
    "lazyfree_clean_first_only",
    "free_clears_block_first_only",
    "zap_zero_page_as_folio",
    "fork_zero_page_as_folio",
    "split_zero_page_first_only",
    "huge_zero_pmd_as_folio",
    "file_dirty_first_only",
    "file_dup_counts_batch_as_one",
    "swap_uffd_wp_first_only",
    "wp_batch_first_only",
    "pageout_batch_first_wp_only",
    "file_marker_first_only",
    "file_batch_ignores_uffd_wp",
    "swapcache_hit_keeps_exclusive",
    "swapin_batch_ignores_exclusive",
    "shared_swapin_maps_exclusive",
    "fork_copies_cont_bit",
)


def load_package_copy(package: str, alias: str) -> ModuleType:
    """A fresh, independent import of one of the project's packages under another name."""
    unload(alias)
    package_dir = PROJECT_DIR / package
    spec = importlib.util.spec_from_file_location(
        alias, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {package_dir} as {alias}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def unload(alias: str) -> None:
    """Forget a copy loaded under alias, with all its submodules."""
    for name in [name for name in sys.modules if name == alias or name.startswith(alias + ".")]:
        del sys.modules[name]


def load_batched_copy(alias: str) -> ModuleType:
    """A fresh, independent import of the batched package under another name."""
    return load_package_copy("batched", alias)


def submodule(package: ModuleType, name: str) -> ModuleType:
    return importlib.import_module(f"{package.__name__}.{name}")


def plant(package: ModuleType, module_name: str, function_name: str, variant: Callable) -> None:
    """Replace module_name.function_name in the copy, and every import of it in the copy.

    The variant then belongs to the copy's module, as a patched function would: the harness
    instruments a canary's copy of batched by module, so the planted code steers its campaign.
    """
    target = submodule(package, module_name)
    original = getattr(target, function_name)
    if isinstance(variant, FunctionType):   # a bound method (kernel-c's C helpers) keeps its own
        variant.__module__ = target.__name__
    for name, module in list(sys.modules.items()):
        if name == package.__name__ or name.startswith(package.__name__ + "."):
            for attribute, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attribute, variant)


def canary_module(name: str) -> ModuleType:
    """The canary's module (it exposes Kernel), loaded by name."""
    if name not in CANARIES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")
