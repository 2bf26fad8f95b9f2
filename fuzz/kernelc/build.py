"""Compile the extracted helpers with the shim and the glue into a host shared library,
cached under a hash of everything that goes into it (so a changed tree is a new build)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from fuzz.atomic import write_atomically
from fuzz.errors import UsageError
from fuzz.kernel.guest import cache_dir

from .extract import extract, generated_source
from .source import kernel_tree

log = structlog.get_logger()

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim.h"
GLUE = HERE / "glue.c"
CFLAGS = ("-shared", "-fPIC", "-O2", "-std=gnu11", "-Wall", "-Wno-unused-function",
          "-Werror=implicit-function-declaration")
CC = os.environ.get("CC", "gcc")


@dataclass(frozen=True)
class Library:
    """A built helper library: where it is, the tree it came from and its extracted names."""

    path: str
    tree: str
    functions: tuple[str, ...]


def compiler_missing() -> str | None:
    """Why the C cannot be compiled here, or None."""
    return None if shutil.which(CC) else f"kernel-c needs a C compiler ({CC}): install gcc (apt-get install gcc)"


def build(tree: str | None = None) -> Library:
    """The helper library for tree (default: kernel_tree()), built unless cached."""
    missing = compiler_missing()
    if missing:
        raise UsageError(missing)
    tree = kernel_tree(tree)
    functions = extract(tree)
    source = generated_source(functions)
    digest = hashlib.sha256("\0".join((SHIM.read_text(), GLUE.read_text(), source, CC, *CFLAGS)).encode())
    directory = os.path.join(cache_dir(), "kernelc", digest.hexdigest()[:16])
    library = os.path.join(directory, "librmapfuzz-kernelc.so")
    names = tuple(function.target.name for function in functions)
    if os.path.exists(library):
        return Library(library, tree, names)
    os.makedirs(directory, exist_ok=True)
    extracted = os.path.join(directory, "extracted.c")
    write_atomically(extracted, source)
    partial = f"{library}.{os.getpid()}"
    log.info("kernelc_build", tree=tree, functions=len(functions))
    done = subprocess.run([CC, *CFLAGS, f"-I{HERE}", f'-DRMAPFUZZ_EXTRACTED="{extracted}"', str(GLUE), "-o", partial],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise UsageError(f"compiling the helpers of {tree} failed (the shim may need the kernel's new types): "
                         + " ".join(done.stderr.split())[:600])
    os.replace(partial, library)
    return Library(library, tree, names)
