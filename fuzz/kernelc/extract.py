"""Take named functions verbatim out of a kernel tree: the signature line and its balanced braces.

A target is (source file, function name). The first definition of the name in the file is
taken (rmap.h's CONFIG_MM_ID variants come before their !CONFIG_MM_ID stubs), with a
`#line` directive so that a warning names the kernel's own file and line. A target that
cannot be found is named in the error, all of them at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fuzz.errors import UsageError

RMAP_H = "include/linux/rmap.h"
MM_H = "include/linux/mm.h"
RMAP_C = "mm/rmap.c"
PAGE_FLAGS_H = "include/linux/page-flags.h"
INTERNAL_H = "mm/internal.h"
UTIL_C = "mm/util.c"
PGTABLE_H = "include/linux/pgtable.h"
ARM64_PGTABLE_H = "arch/arm64/include/asm/pgtable.h"
ARM64_PGTABLE_HWDEF_H = "arch/arm64/include/asm/pgtable-hwdef.h"
ARM64_PGTABLE_PROT_H = "arch/arm64/include/asm/pgtable-prot.h"
CONTPTE_C = "arch/arm64/mm/contpte.c"

FUNCTION, MACRO, CONDITIONAL = "function", "macro", "conditional"


@dataclass(frozen=True)
class Target:
    """What to extract: its source file in the tree, its name and its kind (a function, a
    `#define` with its continuation lines, or an `#ifdef NAME` block to its `#endif`, for
    the preprocessor to choose from as the kernel's build does). An optional one (the
    series' new helpers) is extracted when present and otherwise left out."""

    path: str
    name: str
    optional: bool = False
    kind: str = FUNCTION

    def describe(self) -> str:
        return {FUNCTION: self.name, MACRO: f"#define {self.name}",
                CONDITIONAL: f"#ifdef {self.name}"}[self.kind] + f" ({self.path})"


# The CONFIG_MM_ID mapcount functions, the dup and share paths with their wrappers and the
# sanity checks (include/linux/rmap.h), the pin checks they call (include/linux/mm.h), and
# the anon add and remove paths (mm/rmap.c).
TARGETS: tuple[Target, ...] = (
    Target(MM_H, "folio_has_pincount"),
    Target(MM_H, "folio_maybe_dma_pinned"),
    Target(MM_H, "folio_needs_cow_for_dma"),
    Target(RMAP_H, "folio_lock_large_mapcount"),
    Target(RMAP_H, "folio_unlock_large_mapcount"),
    Target(RMAP_H, "folio_mm_id"),
    Target(RMAP_H, "folio_set_mm_id"),
    Target(RMAP_H, "__folio_large_mapcount_sanity_checks"),
    Target(RMAP_H, "folio_set_large_mapcount"),
    Target(RMAP_H, "folio_add_return_large_mapcount"),
    Target(RMAP_H, "folio_sub_return_large_mapcount"),
    Target(RMAP_H, "__folio_rmap_sanity_checks"),
    Target(RMAP_H, "__folio_try_dup_anon_rmap"),
    Target(RMAP_H, "folio_try_dup_anon_rmap_ptes"),
    Target(RMAP_H, "folio_try_dup_anon_rmap_pte"),
    Target(RMAP_H, "folio_try_dup_anon_rmap_pmd"),
    Target(PAGE_FLAGS_H, "ClearPagesAnonExclusive", optional=True),    # the series, patch 8/9 v1
    Target(MM_H, "folio_clear_pages_anon_exclusive", optional=True),   # its name after review
    Target(RMAP_H, "__folio_try_share_anon_rmap"),
    Target(RMAP_H, "folio_try_share_anon_rmap_pte"),
    Target(RMAP_H, "folio_try_share_anon_rmap_ptes", optional=True),   # the series (patch 8/9)
    Target(RMAP_H, "folio_try_share_anon_rmap_pmd"),
    # Adding and removing mappings (mm/rmap.c): the only users of _nr_pages_mapped.
    Target(RMAP_C, "__folio_add_rmap"),
    Target(RMAP_C, "__folio_add_anon_rmap"),
    Target(RMAP_C, "folio_add_anon_rmap_ptes"),
    Target(RMAP_C, "folio_add_anon_rmap_pmd"),
    Target(RMAP_C, "__folio_remove_rmap"),
    Target(RMAP_C, "folio_remove_rmap_ptes"),
    Target(RMAP_C, "folio_remove_rmap_pmd"),
)

# PTE batching (mm/internal.h, mm/util.c) on the arm64 descriptors: the bits
# (pgtable-hwdef.h, pgtable-prot.h), the accessors and the contpte hint and getter
# (arch/arm64), in the order the preprocessor needs them.
PTE_BATCH_TARGETS: tuple[Target, ...] = (
    *(Target(ARM64_PGTABLE_HWDEF_H, name, kind=MACRO) for name in (
        "CONT_PTE_SHIFT", "CONT_PTES", "PTE_VALID", "PTE_RDONLY", "PTE_AF", "PTE_NG", "PTE_DBM", "PTE_CONT",
        "PTE_ADDR_LOW")),
    *(Target(ARM64_PGTABLE_PROT_H, name, kind=MACRO) for name in ("PTE_WRITE", "PTE_DIRTY", "PTE_PRESENT_INVALID")),
    Target(ARM64_PGTABLE_H, "CONFIG_ARM64_PA_BITS_52", kind=CONDITIONAL),   # __pte_to_phys, __phys_to_pte_val
    *(Target(ARM64_PGTABLE_H, name, kind=MACRO) for name in (
        "pte_pfn", "pfn_pte", "pte_present", "pte_young", "pte_write", "pte_rdonly", "pte_cont", "pte_hw_dirty",
        "pte_sw_dirty", "pte_dirty", "pte_valid", "pte_present_invalid", "pte_valid_cont")),
    *(Target(ARM64_PGTABLE_H, name) for name in (
        "clear_pte_bit", "set_pte_bit", "pte_mkwrite_novma", "pte_mkclean", "pte_mkdirty", "pte_wrprotect",
        "pte_mkold", "pte_mkyoung", "pte_pgprot", "pte_advance_pfn", "__ptep_get", "pte_batch_hint")),
    Target(CONTPTE_C, "contpte_align_down"),
    Target(CONTPTE_C, "contpte_ptep_get"),
    Target(ARM64_PGTABLE_H, "ptep_get"),
    Target(PGTABLE_H, "pte_same"),
    Target(PGTABLE_H, "pte_mkwrite"),
    Target(PGTABLE_H, "pte_clear_soft_dirty"),     # the !CONFIG_HAVE_ARCH_SOFT_DIRTY stub: arm64 has none
    *(Target(INTERNAL_H, name, kind=MACRO) for name in (
        "FPB_RESPECT_DIRTY", "FPB_RESPECT_SOFT_DIRTY", "FPB_RESPECT_WRITE", "FPB_MERGE_WRITE",
        "FPB_MERGE_YOUNG_DIRTY")),
    Target(INTERNAL_H, "__pte_batch_clear_ignored"),
    Target(INTERNAL_H, "folio_pte_batch_flags"),
    Target(UTIL_C, "folio_pte_batch"),
)
TARGETS += PTE_BATCH_TARGETS


class ExtractionError(UsageError):
    """Some targets are not in the tree (or not as functions): their names say which."""

    def __init__(self, tree: str, missing: Sequence[Target]) -> None:
        self.missing = tuple(missing)
        names = ", ".join(target.describe() for target in missing)
        super().__init__(f"kernel tree {tree}: cannot find {names}; the kernel's types or signatures "
                         f"moved: update fuzz/kernelc/shim.h and fuzz/kernelc/extract.py")


@dataclass(frozen=True)
class Extracted:
    """One function as the tree has it: its text and where it starts (1-based)."""

    target: Target
    line: int
    text: str


def definition_start(source: str, name: str) -> re.Match[str] | None:
    """The first line that starts a definition of name: `[static ...] type name(` at a line start,
    its parameters possibly running on, then `{` (a prototype ends with `;` instead)."""
    pattern = re.compile(rf"^[A-Za-z_][^;{{}}()=#]*\b{re.escape(name)}\s*\(", re.MULTILINE)
    for match in pattern.finditer(source):
        body = _balanced_end(source, match.end() - 1, "(", ")")
        if body is None:
            continue
        rest = source[body:].lstrip()
        if rest.startswith("{"):
            return match
    return None


def _balanced_end(source: str, start: int, opening: str, closing: str) -> int | None:
    """The index just past the bracket that closes source[start] (an opening), skipping
    comments, strings and character literals; None if it never closes."""
    depth = 0
    index = start
    while index < len(source):
        char = source[index]
        if source.startswith("/*", index):
            end = source.find("*/", index + 2)
            index = len(source) if end < 0 else end + 2
            continue
        if source.startswith("//", index):
            end = source.find("\n", index)
            index = len(source) if end < 0 else end
            continue
        if char in "\"'":
            index = _literal_end(source, index)
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None


def _literal_end(source: str, start: int) -> int:
    quote = source[start]
    index = start + 1
    while index < len(source) and source[index] != quote:
        index += 2 if source[index] == "\\" else 1
    return index + 1


def extract_function(source: str, name: str) -> tuple[int, str] | None:
    """(first line, text) of name's first definition in source, verbatim, or None."""
    match = definition_start(source, name)
    if match is None:
        return None
    brace = source.index("{", _balanced_end(source, match.end() - 1, "(", ")") or match.end())
    end = _balanced_end(source, brace, "{", "}")
    if end is None:
        return None
    return source.count("\n", 0, match.start()) + 1, source[match.start():end]


def extract_macro(source: str, name: str) -> tuple[int, str] | None:
    """(first line, text) of name's first `#define`, with its continuation lines, or None."""
    match = re.search(rf"^#[ \t]*define[ \t]+{re.escape(name)}\b", source, re.MULTILINE)
    if match is None:
        return None
    end = match.start()
    while True:
        newline = source.find("\n", end)
        if newline < 0:
            end = len(source)
            break
        if not source[end:newline].rstrip().endswith("\\"):
            end = newline
            break
        end = newline + 1
    return source.count("\n", 0, match.start()) + 1, source[match.start():end]


def extract_conditional(source: str, name: str) -> tuple[int, str] | None:
    """(first line, text) of the first `#ifdef name` block through its matching `#endif`."""
    match = re.search(rf"^#[ \t]*ifdef[ \t]+{re.escape(name)}\b", source, re.MULTILINE)
    if match is None:
        return None
    depth = 0
    for directive in re.finditer(r"^#[ \t]*(if|ifdef|ifndef|endif)\b.*$", source[match.start():], re.MULTILINE):
        depth += -1 if directive.group(1) == "endif" else 1
        if depth == 0:
            end = match.start() + directive.end()
            return source.count("\n", 0, match.start()) + 1, source[match.start():end]
    return None


EXTRACTORS = {FUNCTION: extract_function, MACRO: extract_macro, CONDITIONAL: extract_conditional}


def extract(tree: str, targets: Sequence[Target] = TARGETS) -> list[Extracted]:
    """Every target found in tree, in the order given; ExtractionError naming each
    required target that is not there."""
    sources: dict[str, str | None] = {}
    found: list[Extracted] = []
    missing: list[Target] = []
    for target in targets:
        if target.path not in sources:
            sources[target.path] = _read(os.path.join(tree, target.path))
        source = sources[target.path]
        function = EXTRACTORS[target.kind](source, target.name) if source is not None else None
        if function is None:
            if not target.optional:
                missing.append(target)
            continue
        found.append(Extracted(target, *function))
    if missing:
        raise ExtractionError(tree, missing)
    return found


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except OSError:
        return None


def generated_source(functions: Sequence[Extracted]) -> str:
    """The functions as one C file to include after shim.h: each behind a `#line` naming its
    place in the tree, and a RMAPFUZZ_HAVE_<name> macro for each (the glue asks which
    optional helpers the tree has)."""
    parts = ["/* Generated by rmapfuzz from a kernel tree: the functions verbatim. Not to be committed. */\n"]
    for function in functions:
        parts.append(f"#define RMAPFUZZ_HAVE_{function.target.name} 1\n")
        parts.append(f'#line {function.line} "{function.target.path}"\n{function.text}\n\n')
    return "".join(parts)
