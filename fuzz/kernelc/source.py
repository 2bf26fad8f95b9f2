"""The kernel tree the C helpers come from: Debian's linux-source for the kernel the bridge
boots (fetched once, only the files extraction reads kept, in the cache), or a developer's
own tree (`--kernel-tree DIR`, also `$RMAPFUZZ_KERNEL_TREE`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import structlog

from fuzz.errors import UsageError
from fuzz.kernel.guest import DebianArchive, cache_dir, missing_tools

from .extract import TARGETS
from .series import KERNEL_PATCH_ENV, patched_tree

log = structlog.get_logger()

KERNEL_TREE_ENV = "RMAPFUZZ_KERNEL_TREE"
# What extraction reads, and the files the series' patch touches.
SOURCE_FILES = tuple(sorted({target.path for target in TARGETS} | {"mm/rmap.c"}))
INSTALL_HINT = "apt-get install gcc dpkg xz-utils, or pass --kernel-tree DIR"


def source_package(kernel_version: str) -> str:
    """linux-source-<major.minor> for a Debian kernel version like 7.2.13+deb14."""
    return "linux-source-" + ".".join(kernel_version.split(".")[:2])


def kernel_tree(tree: str | None = None, patch: str | None = None) -> str:
    """tree, else $RMAPFUZZ_KERNEL_TREE, else Debian's source of the kernel the bridge boots;
    with patch (else $RMAPFUZZ_KERNEL_PATCH: a diff or a review thread quoting one) applied
    to a copy of it in the cache."""
    tree = tree or os.environ.get(KERNEL_TREE_ENV) or None
    patch = patch or os.environ.get(KERNEL_PATCH_ENV) or None
    if tree is None:
        tree = debian_source_tree()
    elif not os.path.isdir(tree):
        raise UsageError(f"{tree}: no such kernel tree")
    if patch is None:
        return os.path.abspath(tree)
    try:
        with open(patch, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise UsageError(f"--kernel-patch {patch}: {error.strerror}") from error
    return patched_tree(tree, text, SOURCE_FILES)


def debian_source_tree(version: str | None = None) -> str:
    """Debian sid's linux-source package for the newest arm64 kernel (the one `rmapfuzz kernel`
    boots), reduced to SOURCE_FILES in the cache; downloaded on first use."""
    missing = missing_tools(("apt-get", "dpkg-deb", "tar", "xz"))
    if missing:
        raise UsageError(f"kernel-c needs {', '.join(missing)} to fetch Debian's kernel source: {INSTALL_HINT}")
    archive = DebianArchive(os.path.join(cache_dir(), "apt"))
    archive.update()
    version = version or archive.newest_kernel()
    package = source_package(version)
    root = os.path.join(cache_dir(), "kernel-source", version)
    tree = os.path.join(root, package)
    if all(os.path.exists(os.path.join(tree, path)) for path in SOURCE_FILES):
        return tree
    debs = os.path.join(root, "debs")
    log.info("kernel_source_download", package=package, version=version)
    archive.download([package], debs)
    unpacked = os.path.join(root, "unpacked")
    for deb in sorted(os.listdir(debs)):
        _run(["dpkg-deb", "-x", os.path.join(debs, deb), unpacked], f"dpkg-deb -x {deb}")
    tarball = os.path.join(unpacked, "usr", "src", f"{package}.tar.xz")
    if not os.path.exists(tarball):
        raise UsageError(f"{package} holds no usr/src/{package}.tar.xz")
    _run(["tar", "-xJf", tarball, "-C", root, *(f"{package}/{path}" for path in SOURCE_FILES)],
         f"tar -x of {package}'s sources")
    shutil.rmtree(debs)
    shutil.rmtree(unpacked)
    return tree


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise UsageError(f"{what} failed: {' '.join(done.stderr.split())[:300]}")
