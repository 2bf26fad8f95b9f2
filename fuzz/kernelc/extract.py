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


@dataclass(frozen=True)
class Target:
    """A function to extract: its source file in the tree and its name. An optional one
    (the series' new helpers) is extracted when present and otherwise left out."""

    path: str
    name: str
    optional: bool = False


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


class ExtractionError(UsageError):
    """Some targets are not in the tree (or not as functions): their names say which."""

    def __init__(self, tree: str, missing: Sequence[Target]) -> None:
        self.missing = tuple(missing)
        names = ", ".join(f"{target.name} ({target.path})" for target in missing)
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
        function = extract_function(source, target.name) if source is not None else None
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
