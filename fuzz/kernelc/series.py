"""A patch series applied to a kernel tree at run time: a plain diff, or the diff quoted in a
review thread (each line under "> >> ", its leading whitespace lost, as mail archives keep
it), rebuilt. The patched tree is a copy of the files extraction reads, in the cache; the
patch is never committed."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass

from fuzz.errors import UsageError
from fuzz.kernel.guest import cache_dir

KERNEL_PATCH_ENV = "RMAPFUZZ_KERNEL_PATCH"
QUOTED_PATCH = "> >> "        # the patch as the review thread quotes it (two levels deep)
HEADER = re.compile(r"^(diff --git |index |--- a/|\+\+\+ b/|@@ )")


def patch_from_thread(text: str) -> str:
    """The diff a review thread quotes, as a patch `patch -l` applies: its lines taken from
    under QUOTED_PATCH, context lines given back their leading space. A plain diff is
    returned as it is."""
    if not any(line.startswith(QUOTED_PATCH + "diff --git ") for line in text.splitlines()):
        return text
    lines: list[str] = []
    in_diff = False
    for raw in text.splitlines():
        if not (raw.startswith(QUOTED_PATCH) or raw == QUOTED_PATCH.rstrip()):
            continue
        line = raw[len(QUOTED_PATCH):]
        if line.startswith("diff --git "):
            in_diff = True
        if not in_diff:
            continue
        if line == "--":                      # the mail signature ends the diff
            break
        if HEADER.match(line) or line.startswith(("+", "-")):
            lines.append(line)
        else:
            lines.append(" " + line)          # a context line: its leading space was lost
    return "\n".join(lines) + "\n"


def files_of(patch: str) -> list[str]:
    return [line[len("+++ b/"):] for line in patch.splitlines() if line.startswith("+++ b/")]


def only_files(patch: str, wanted: set[str]) -> str:
    """The parts of patch that change files in wanted (the tree is only those files)."""
    parts = re.split(r"(?m)^(?=diff --git )", patch)
    kept = [part for part in parts if part.startswith("diff --git ") and files_of(part)
            and files_of(part)[0] in wanted]
    return "".join(kept)


def patched_tree(tree: str, patch: str, files: tuple[str, ...]) -> str:
    """A copy of tree's files with patch applied (apply_patch), cached under a hash of both;
    UsageError naming each hunk that does not apply."""
    patch = only_files(patch_from_thread(patch), set(files))
    if not patch:
        raise UsageError("the kernel patch changes none of the files kernel-c reads")
    digest = hashlib.sha256(patch.encode())
    for name in files:
        with open(os.path.join(tree, name), "rb") as stream:
            digest.update(stream.read())
    root = os.path.join(cache_dir(), "kernelc-trees", digest.hexdigest()[:16])
    if os.path.exists(os.path.join(root, "applied.patch")):
        return root
    partial = f"{root}.{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    for name in files:
        os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
        shutil.copyfile(os.path.join(tree, name), os.path.join(partial, name))
    try:
        apply_patch(partial, patch)
    except UsageError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    with open(os.path.join(partial, "applied.patch"), "w", encoding="utf-8") as stream:
        stream.write(patch)
    try:
        os.replace(partial, root)
    except OSError:              # another process made it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    return root


@dataclass
class Hunk:
    """One hunk: where the patch says it starts, the lines it expects and what replaces them."""

    path: str
    line: int
    old: list[str]
    new: list[str]


def hunks_of(patch: str) -> list[Hunk]:
    hunks: list[Hunk] = []
    path = ""
    for line in patch.splitlines():
        if line.startswith("+++ b/"):
            path = line[len("+++ b/"):]
        elif line.startswith("@@ "):
            match = re.match(r"@@ -(\d+)", line)
            hunks.append(Hunk(path, int(match.group(1)) if match else 1, [], []))
        elif hunks and not line.startswith(("diff --git ", "index ", "--- a/")):
            marker, text = line[:1], line[1:]
            if marker in (" ", "-"):
                hunks[-1].old.append(text)
            if marker in (" ", "+"):
                hunks[-1].new.append(text)
    return hunks


def _blanks_ignored(line: str) -> str:
    return " ".join(line.split())


MAX_FUZZ = 3   # context lines a hunk may lose at each end, as patch's --fuzz


def _trimmed(hunk: Hunk, fuzz: int) -> Hunk:
    """hunk without up to fuzz context lines at each end (as `patch` fuzzes)."""
    old, new = list(hunk.old), list(hunk.new)
    for _ in range(fuzz):
        if old and new and old[0] == new[0]:
            old, new = old[1:], new[1:]
        if old and new and old[-1] == new[-1]:
            old, new = old[:-1], new[:-1]
    return Hunk(hunk.path, hunk.line, old, new)


def _apply_hunk(lines: list[str], hunk: Hunk) -> bool:
    """Replace hunk's old lines by its new ones at the match nearest its line; False if none."""
    wanted = [_blanks_ignored(line) for line in hunk.old]
    normal = [_blanks_ignored(line) for line in lines]
    starts = [index for index in range(len(lines) - len(wanted) + 1)
              if normal[index:index + len(wanted)] == wanted]
    if not starts:
        return False
    start = min(starts, key=lambda index: abs(index + 1 - hunk.line))
    tree_text = dict(zip(wanted, lines[start:start + len(wanted)], strict=True))
    lines[start:start + len(wanted)] = [tree_text.get(_blanks_ignored(line), line) for line in hunk.new]
    return True


def apply_patch(root: str, patch: str) -> None:
    """Apply each hunk where its lines match the file with blanks ignored (a quoted patch
    lost its indentation), at the match nearest the line it names; context lines keep the
    tree's own text. UsageError naming every hunk that matches nowhere."""
    failed: list[str] = []
    for hunk in hunks_of(patch):
        path = os.path.join(root, hunk.path)
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().split("\n")
        for fuzz in range(MAX_FUZZ + 1):
            if _apply_hunk(lines, _trimmed(hunk, fuzz)):
                break
        else:
            failed.append(f"{hunk.path} hunk at line {hunk.line}")
            continue
        with open(path, "w", encoding="utf-8") as stream:
            stream.write("\n".join(lines))
    if failed:
        raise UsageError(f"the kernel patch does not apply: {', '.join(failed)}")
