"""The guest: Debian's arm64 kernel under qemu, an initramfs with the runtime as /init, one boot.

Nothing here is committed: the kernel packages are fetched from Debian's sid
arm64 archive through a private apt list (the host's apt configuration is not
touched) into a cache, `~/.cache/rmapfuzz/kernel` or `$RMAPFUZZ_CACHE`; the
runtime is compiled there with the cross compiler, and the disk for regular
files (an empty ext4 image, `mkfs.ext4`) made there once; the guest writes it
through a qemu snapshot, so the cached image stays empty. The initramfs and the
boot's output live in a temporary directory (or `--keep DIR`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from fuzz.errors import UsageError

from .realise import RUNTIME_SOURCE

log = structlog.get_logger()

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "sid"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
FLAVOUR = "arm64"                       # linux-binary-<version>-arm64: not cloud, rt or 16k
MODULES = ("zram", "virtio_blk", "ext4")   # loaded at boot, with what they depend on
LIST_MAX_AGE = 24 * 3600                # refresh the package list once a day
QEMU_MEMORY = "1G"
# The disk for regular files: ext4 without a journal (no jbd2 commit writes anything behind a
# script's back), inode tables initialised at mkfs (no ext4lazyinit thread), 4 KiB blocks.
DISK_SIZE = 256 << 20
MKFS_ARGS = ("-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-O", "^has_journal",
             "-E", "lazy_itable_init=0", "-L", "rmapfuzz")
# The model's machine (SPEC §2): 48-bit VA and PA, 4 levels. qemu's "max" CPU has FEAT_LPA2, on which
# Debian's kernel (CONFIG_ARM64_LPA2) turns on 52-bit PA and 5 levels; there its folio split
# restores every PTE old though the migration entry holds the young bit (docs/model.md, "LPA2").
QEMU_CPU = "max,pauth-impdef=on,lpa2=off"
BOOT_ARGS = ("console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=3 cma=0 norandmaps "
             "damon_stat.enabled=0")
CROSS_CC = "aarch64-linux-gnu-gcc"
CC_FLAGS = ("-static-pie", "-O2", "-Wall", "-Wno-unused-result", "-march=armv8.1-a")

# What each tool is and which Debian package brings it.
TOOLS = {
    "qemu-system-aarch64": "qemu-system-arm",
    CROSS_CC: "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "mkfs.ext4": "e2fsprogs",
}


def cache_dir() -> str:
    return os.environ.get("RMAPFUZZ_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rmapfuzz")


def tool_path(name: str) -> str | None:
    """Where name is on PATH, or in /usr/sbin or /sbin (mkfs.ext4's home, off a user's PATH)."""
    return shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin")))


def missing_tools(names: Sequence[str] = tuple(TOOLS)) -> list[str]:
    """The tools of names that are not on PATH."""
    return [name for name in names if tool_path(name) is None]


def require_tools(names: Sequence[str] = tuple(TOOLS)) -> None:
    """UsageError naming the first missing tool and the package that brings it."""
    for name in missing_tools(names):
        raise UsageError(f"{name} not found: install it with 'apt-get install {TOOLS[name]}'")


def _run(command: list[str], what: str, timeout: float = 900, cwd: str | None = None) -> str:
    """command's standard output; UsageError naming what failed, with its last line of output."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UsageError(f"{what}: {error}") from error
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
        raise UsageError(f"{what} failed ({done.returncode}): {last[0][:200]}")
    return done.stdout


# ---------------------------------------------------------------------------
# The kernel packages


@dataclass(frozen=True)
class KernelBuild:
    """A bootable kernel: its arm64 Image, the module tree it was built with, its name, and the
    virtual CPU it boots on."""

    version: str            # the Debian package version, or "custom"
    image: str
    modules: str | None     # a directory holding kernel/.../*.ko[.xz], or None
    cpu: str = QEMU_CPU     # qemu's -cpu: the virtual CPU it boots on


class DebianArchive:
    """A private apt view of Debian sid's arm64 packages, in the cache."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.sources = os.path.join(root, "sources.list")
        self.lists = os.path.join(root, "lists")
        self.archives = os.path.join(root, "archives")

    def apt_options(self) -> list[str]:
        return ["-o", f"Dir::Etc::sourcelist={self.sources}", "-o", "Dir::Etc::sourceparts=-",
                "-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
                "-o", f"Dir::State::Lists={self.lists}", "-o", f"Dir::Cache={self.root}/cache",
                "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1"]

    def update(self) -> None:
        """Fetch the package list unless one younger than a day is there."""
        os.makedirs(os.path.join(self.lists, "partial"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "cache", "archives", "partial"), exist_ok=True)
        with open(self.sources, "w", encoding="utf-8") as stream:
            stream.write(f"deb [arch=arm64 signed-by={KEYRING}] {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n")
        stamp = os.path.join(self.root, "updated")
        if os.path.exists(stamp) and time.time() - os.path.getmtime(stamp) < LIST_MAX_AGE:
            return
        log.info("kernel_packages_update", suite=DEBIAN_SUITE)
        _run(["apt-get", *self.apt_options(), "update"], "apt-get update of Debian's arm64 list")
        with open(stamp, "w", encoding="utf-8"):
            pass

    def newest_kernel(self) -> str:
        """The newest <version> with a linux-binary-<version>-arm64 package."""
        names = _run(["apt-cache", *self.apt_options(), "search", "--names-only",
                      f"^linux-binary-[0-9][^-]*-{FLAVOUR}$"], "apt-cache search").split("\n")
        versions = [name.split()[0][len("linux-binary-"):-len(f"-{FLAVOUR}")]
                    for name in names if name.startswith("linux-binary-")]
        if not versions:
            raise UsageError(f"Debian {DEBIAN_SUITE} lists no linux-binary-*-{FLAVOUR} package")
        newest = versions[0]
        for version in versions[1:]:
            if subprocess.run(["dpkg", "--compare-versions", version, "gt", newest], check=False).returncode == 0:
                newest = version
        return newest

    def download(self, packages: Sequence[str], into: str) -> None:
        os.makedirs(into, exist_ok=True)
        _run(["apt-get", *self.apt_options(), "download", *packages], f"apt-get download {' '.join(packages)}",
             cwd=into)


def debian_kernel(version: str | None = None) -> KernelBuild:
    """Debian's arm64 kernel (the newest in sid unless version is given), fetched once into the cache."""
    require_tools(("apt-get", "dpkg-deb"))
    archive = DebianArchive(os.path.join(cache_dir(), "apt"))
    archive.update()
    version = version or archive.newest_kernel()
    root = os.path.join(cache_dir(), "kernel", version)
    modules = os.path.join(root, "usr", "lib", "modules", f"{version}-{FLAVOUR}")
    image = os.path.join(modules, "vmlinuz")
    if not os.path.exists(image):
        packages = [f"linux-{part}-{version}-{FLAVOUR}" for part in ("binary", "modules", "base")]
        debs = os.path.join(root, "debs")
        log.info("kernel_packages_download", version=version)
        archive.download(packages, debs)
        for deb in sorted(os.listdir(debs)):
            _run(["dpkg-deb", "-x", os.path.join(debs, deb), root], f"dpkg-deb -x {deb}")
        shutil.rmtree(debs)
    if not os.path.exists(image):
        raise UsageError(f"the {version} packages hold no {image}")
    return KernelBuild(version, image, modules)


def custom_kernel(image: str, modules: str | None) -> KernelBuild:
    """A kernel the user built: --kernel IMAGE [--modules DIR]."""
    if not os.path.isfile(image):
        raise UsageError(f"{image}: no such kernel image")
    if modules is not None and not os.path.isdir(modules):
        raise UsageError(f"{modules}: no such module directory")
    return KernelBuild("custom", image, modules)


# ---------------------------------------------------------------------------
# The runtime and the initramfs


def build_runtime() -> str:
    """The guest's /init, compiled once per runtime source into the cache."""
    require_tools((CROSS_CC,))
    with open(RUNTIME_SOURCE, "rb") as stream:
        source = stream.read()
    digest = hashlib.sha256(source + " ".join(CC_FLAGS).encode()).hexdigest()[:16]
    binary = os.path.join(cache_dir(), "runtime", f"init-{digest}")
    if not os.path.exists(binary):
        os.makedirs(os.path.dirname(binary), exist_ok=True)
        temporary = f"{binary}.{os.getpid()}.tmp"
        _run([CROSS_CC, *CC_FLAGS, "-DRF_INIT", "-o", temporary, RUNTIME_SOURCE], "compiling the guest runtime")
        os.replace(temporary, binary)
    return binary


def disk_image() -> str:
    """The empty ext4 image the guest mounts for regular files, made once into the cache."""
    require_tools(("mkfs.ext4",))
    digest = hashlib.sha256(f"{DISK_SIZE} {' '.join(MKFS_ARGS)}".encode()).hexdigest()[:16]
    image = os.path.join(cache_dir(), "disk", f"ext4-{digest}.img")
    if not os.path.exists(image):
        os.makedirs(os.path.dirname(image), exist_ok=True)
        temporary = f"{image}.{os.getpid()}.tmp"
        with open(temporary, "wb") as stream:
            stream.truncate(DISK_SIZE)     # sparse: the image takes only what mkfs writes
        _run([tool_path("mkfs.ext4") or "mkfs.ext4", *MKFS_ARGS, temporary], "mkfs.ext4 of the guest's disk")
        os.replace(temporary, image)
    return image


def _module_files(modules: str) -> dict[str, str]:
    """Module name -> path of its .ko or .ko.xz under modules/kernel."""
    found: dict[str, str] = {}
    for directory, _dirs, files in os.walk(os.path.join(modules, "kernel")):
        for name in files:
            for suffix in (".ko.xz", ".ko"):
                if name.endswith(suffix):
                    found.setdefault(name[:-len(suffix)].replace("-", "_"), os.path.join(directory, name))
    return found


def _module_bytes(path: str) -> bytes:
    with open(path, "rb") as stream:
        data = stream.read()
    return lzma.decompress(data) if path.endswith(".xz") else data


def _module_depends(data: bytes) -> list[str]:
    """The depends= field of a module's .modinfo."""
    start = data.find(b"\0depends=")
    if start < 0:
        return []
    value = data[start + len(b"\0depends="):data.index(b"\0", start + 1)].decode()
    return [name.replace("-", "_") for name in value.split(",") if name]


def modules_in_load_order(modules: str | None, wanted: Sequence[str] = MODULES) -> list[tuple[str, bytes]]:
    """(name, module bytes) for each wanted module and what it depends on, dependencies first."""
    if modules is None:
        return []
    files = _module_files(modules)
    ordered: list[tuple[str, bytes]] = []

    def visit(name: str) -> None:
        if name in (done for done, _ in ordered) or name not in files:
            return
        data = _module_bytes(files[name])
        for dependency in _module_depends(data):
            visit(dependency)
        ordered.append((name, data))

    for name in wanted:
        visit(name)
    return ordered


def _cpio_entry(out: io.BytesIO, name: str, mode: int, data: bytes = b"", inode: int = 1) -> None:
    """One entry of a newc cpio archive."""
    encoded = name.encode() + b"\0"
    fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    out.write(b"070701" + b"".join(f"{value:08x}".encode() for value in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


def pack_initramfs(path: str, init: bytes, modules: list[tuple[str, bytes]], scripts: list[tuple[str, str]]) -> None:
    """A gzip newc initramfs: /init, the modules in load order, one file per script under /scripts."""
    out = io.BytesIO()
    inode = 1
    for directory in ("proc", "sys", "dev", "tmp", "lib", "lib/modules", "scripts"):
        _cpio_entry(out, directory, 0o040755, inode=inode)
        inode += 1
    _cpio_entry(out, "init", 0o100755, init, inode)
    for index, (name, data) in enumerate(modules):
        inode += 1
        _cpio_entry(out, f"lib/modules/{index:02d}-{name}.ko", 0o100644, data, inode)
    for name, text in scripts:
        inode += 1
        _cpio_entry(out, f"scripts/{name}", 0o100644, text.encode(), inode)
    _cpio_entry(out, "TRAILER!!!", 0, inode=0)
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(out.getvalue())


# ---------------------------------------------------------------------------
# One boot


@dataclass
class Boot:
    """What one boot printed, and how long it took."""

    output: str             # the runtime's observation channel
    console: str            # the kernel console
    seconds: float
    exit_status: int
    timed_out: bool


def boot(kernel: KernelBuild, scripts: list[tuple[str, str]], work_dir: str, timeout: float,
         init: bytes | None = None) -> Boot:
    """Boot kernel once with the runtime as /init running scripts (or another static program
    as /init: an exported reproducer); its output comes back on a virtio-serial port named
    rmapfuzz. The ext4 disk is the guest's /dev/vda, written through a snapshot (the cached
    image is never changed)."""
    require_tools(("qemu-system-aarch64",))
    disk = disk_image()
    if init is None:
        with open(build_runtime(), "rb") as stream:
            init = stream.read()
    initramfs = os.path.join(work_dir, "initramfs.cpio.gz")
    output = os.path.join(work_dir, "observations.txt")
    console = os.path.join(work_dir, "console.txt")
    pack_initramfs(initramfs, init, modules_in_load_order(kernel.modules), scripts)
    command = ["qemu-system-aarch64", "-M", "virt", "-cpu", kernel.cpu, "-smp", "1",
               "-m", QEMU_MEMORY, "-nographic", "-no-reboot", "-nic", "none",   # no NIC: no option ROM
               "-kernel", kernel.image, "-initrd", initramfs,
               "-append", BOOT_ARGS, "-chardev", f"file,id=observations,path={output}",
               "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=observations,name=rmapfuzz",
               "-drive", f"file={disk},format=raw,if=none,id=disk,snapshot=on",
               "-device", "virtio-blk-pci,drive=disk"]
    started = time.monotonic()
    timed_out = False
    with open(console, "wb") as console_stream:
        try:
            done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=console_stream,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
            status = done.returncode
        except subprocess.TimeoutExpired:
            timed_out, status = True, -1
    seconds = time.monotonic() - started
    log.info("kernel_boot", scripts=len(scripts), seconds=round(seconds, 2), status=status, timed_out=timed_out)
    return Boot(_read_text(output), _read_text(console), seconds, status, timed_out)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except OSError:
        return ""


def work_directory(keep: str | None) -> tuple[str, tempfile.TemporaryDirectory[str] | None]:
    """--keep DIR, created if needed, or a temporary directory removed with the returned handle."""
    if keep:
        os.makedirs(keep, exist_ok=True)
        return keep, None
    handle = tempfile.TemporaryDirectory(prefix="rmapfuzz-kernel-")
    return handle.name, handle
