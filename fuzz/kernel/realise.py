"""Op scripts as a real kernel runs them: which ops have a faithful realisation, and the C reproducer.

Each op becomes one `GuestOp` of the guest runtime (fuzz/kernel/runtime.c):
`mmap` with MAP_FIXED_NOREPLACE, `fault ... order=K` as a write fault with
the mTHP sizes up to K set to `always`, `file F LEN` as a memfd (shmem) or a
file on the guest's ext4 disk, `pin ... rw` as io_uring buffer
registration, `reclaim` as MADV_PAGEOUT of exactly the folio's pages, `split`
through debugfs `split_huge_pages`, and so on. An op with no faithful
realisation makes the whole script unsupported, with the op and the reason;
no stand-in with other semantics is ever used. Some reasons show only on the
model's run (an ENOMEM path, a reclaim of a folio several processes map), so
`realise` takes that run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fuzz.script.ops import Op, Script, format_op
from machine.pgtable import PAGE_SHIFT

from .model import ModelRun, ModelStep, script_ops
from .observe import PRESENT, SWAP, ZERO, PageView

# The guest runtime's op kinds (enum rf_op_kind in runtime.c).
GUEST_KINDS = {"mmap": 0, "munmap": 1, "dontneed": 2, "mprotect": 3, "fault": 4, "write": 5, "read": 6,
               "pin": 7, "unpin": 8, "fork": 9, "exit": 10, "reclaim": 11, "split": 12, "free": 13,
               "file": 14, "sync": 15, "uffd": 16, "wp": 17, "split_pmd": 18}
MAX_FILES = 16                 # MAX_FILES in runtime.c
RUNTIME_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime.c")

USER_VA_LIMIT = 1 << 47        # the runtime's own binary, stack and mmaps live above this
MAX_OBSERVED_PAGES = 1 << 20   # the runtime keeps a hash per observed page per process
MAX_RANGES = 256               # MAX_RANGES in runtime.c
MAX_PROCESSES = 64             # MAX_PROCESSES in runtime.c
MAX_PINS = 256                 # MAX_PINS in runtime.c
IO_URING_MAX_BUFFERS = 1 << 14  # IORING_MAX_REG_BUFFERS: one buffer per pinned page
# Ops whose ENOMEM means the model ran out of frames or slots (dontneed's, free's and mprotect's mean a hole).
ALLOCATING_OPS = frozenset({"fault", "write", "read", "pin", "fork", "reclaim", "try_to_unmap", "split"})


@dataclass(frozen=True)
class GuestOp:
    """One op as the guest runtime takes it: struct rf_op."""

    kind: int
    process: int
    addr: int = 0
    length: int = 0
    value: int = 0
    arg: int = 0

    def line(self) -> str:
        """The runtime's script-file line: "kind process addr length value arg" in decimal."""
        return f"{self.kind} {self.process} {self.addr} {self.length} {self.value} {self.arg}"


@dataclass(frozen=True)
class Unsupported:
    """Why a script cannot run faithfully on a real kernel: its first unrealisable op."""

    line: int
    op_text: str
    reason: str

    def describe(self) -> str:
        return f"line {self.line} '{self.op_text}': {self.reason}"


class UnsupportedScript(Exception):
    """Raised with the Unsupported record of a script that has no faithful realisation."""

    def __init__(self, unsupported: Unsupported) -> None:
        super().__init__(unsupported.describe())
        self.unsupported = unsupported


def _static_reason(op: Op) -> str | None:
    """Why op alone has no realisation, or None."""
    if op.file is not None and op.file >= MAX_FILES:
        return f"the runtime keeps at most {MAX_FILES} files"
    if op.name == "try_to_unmap":
        return "the race of GUP-fast with reclaim that try_to_unmap models cannot be brought about from user space"
    if op.name == "pin" and op.prot == "ro":
        return "a read-only long-term pin needs GUP_TEST, which Debian's kernel lacks"
    if op.addr is not None and op.addr + (op.length or (op.nr_pages or 0) << PAGE_SHIFT) > USER_VA_LIMIT:
        return f"reaches above {USER_VA_LIMIT:#x}, where the runtime's own mappings live"
    if op.name == "pin" and op.addr == 0:
        return "io_uring refuses a buffer at address 0"
    if op.name == "pin" and (op.nr_pages or 0) > IO_URING_MAX_BUFFERS:
        return f"io_uring registers at most {IO_URING_MAX_BUFFERS} buffers (one per pinned page)"
    return None


def _script_reason(run: ModelRun) -> str | None:
    if len(run.pages.ranges) > MAX_RANGES:
        return f"more than {MAX_RANGES} distinct mmap ranges to observe"
    if run.pages.nr_pages > MAX_OBSERVED_PAGES:
        return f"more than {MAX_OBSERVED_PAGES} pages to observe"
    return None


def _model_reason(step_index: int, run: ModelRun) -> str | None:
    """Why the op of this model step cannot be shown faithfully, given what the model did."""
    step = run.steps[step_index]
    op = step.op
    previous = run.steps[step_index - 1].large_cache_folios if step_index else frozenset()
    made = sorted(step.large_cache_folios - previous)
    if made:
        file_id, _index, order = made[0]
        return _large_cache_folio_reason(_file_is_shmem(run, file_id), order)
    if step.result == "SIGBUS":
        return "an access past a file's end: the runtime does not turn SIGBUS into a result"
    if step.result == "ENOMEM" and op.name in ALLOCATING_OPS:
        return "an ENOMEM path: the model's frames or swap slots ran out, a 1 GiB guest's do not"
    if op.name == "reclaim":
        view = step.before.get((op.process or 0, op.addr or 0))
        if view is not None and view.state == PRESENT and step.after != step.before and any(
                other.state == PRESENT and other.head == view.head and key[0] != op.process
                for key, other in step.before.items()):
            return "MADV_PAGEOUT skips a folio that more than one process maps"
        if view is not None and view.state == PRESENT and view.file and step.after != step.before:
            reason = _file_pageout_reason(view, step, _vma_file_is_shmem(run, step_index))
            if reason:
                return reason
        if view is not None and view.state == PRESENT and _swap_out_fallback(view, step):
            return ("the model's swap had no aligned run of slots for the folio (the swap-out fallback "
                    "splits it), the guest's 256 MiB zram has")
    if op.name in ("write", "fault", "pin") and _huge_zero_fallback(step):
        return ("the model had no free aligned run of 512 frames for the PMD THP that replaces the huge "
                "zero folio (do_huge_zero_wp_pmd falls back to splitting the PMD), a 1 GiB guest has")
    if op.name == "fork" and step.new_process is not None and step.new_process >= MAX_PROCESSES:
        return f"more than {MAX_PROCESSES} processes"
    if op.name == "pin" and step.result == "ok":
        nr_pins = sum(1 for earlier in run.steps[:step_index + 1]
                      if earlier.op.name == "pin" and earlier.result == "ok")
        if nr_pins > MAX_PINS:
            return f"more than {MAX_PINS} pins"
    return None


def _huge_zero_fallback(step: ModelStep) -> bool:
    """A write fault of the step split a huge zero PMD of the process (the model's PMD THP
    allocation failed): a page that was the huge zero folio's is mapped by a PTE after it."""
    process = step.op.process or 0
    return any(view.state == ZERO and view.level == "pmd" and key[0] == process
               and (after := step.after.get(key)) is not None and after.level == "pte"
               for key, view in step.before.items())


def _large_cache_folio_reason(shmem: bool, order: int) -> str:
    """Why a page-cache folio of order > 0 the model makes has no realisation."""
    if shmem:
        return (f"the model makes an order-{order} shmem folio: a memfd's fault allocates only the PMD "
                "size, and only under the top-level shmem_enabled (shmem_huge_global_enabled; the "
                "per-size hugepages-*/shmem_enabled apply to anonymous shared mappings alone), where "
                "the model's page cache stops at order 8, PTE-mapped")
    return (f"the model makes an order-{order} regular-file folio: a file fault allocates what readahead "
            "decides (page_cache_ra_order: read-around, VM_HUGEPAGE's PMD size, VM_EXEC's 64K), never "
            "the order one fault asks; the guest's readahead is off, so its folios are order 0")


def _file_pageout_reason(view: PageView, step: ModelStep, shmem: bool) -> str | None:
    """Why MADV_PAGEOUT does not do what the model's reclaim of this page-cache folio does."""
    mappings = [other for other in step.before.values() if other.state == PRESENT and other.head == view.head]
    if len(mappings) > 1 << view.order:
        return ("MADV_PAGEOUT skips a folio mapped more often than it has pages "
                "(madvise_cold_or_pageout_pte_range: folio_mapcount != folio_nr_pages)")
    if not shmem and (view.folio_dirty or any(other.dirty for other in mappings)):
        return ("MADV_PAGEOUT leaves a dirty regular-file folio to the flushers (shrink_folio_list: only "
                "kswapd writes file folios back), unmapped and still dirty in the cache; the model "
                "writes it back as kswapd's pageout would")
    return None


def _file_is_shmem(run: ModelRun, file_id: int) -> bool:
    """Whether the script's file Fn is a shmem one (the first `file Fn` op makes it)."""
    return any(op.name == "file" and op.file == file_id and op.shmem for op in script_ops(run.script))


def _vma_file_is_shmem(run: ModelRun, step_index: int) -> bool:
    """Whether the file mapped where the op of this step points is shmem: the last mmap covering
    the address made by that process, or by its parent before the fork that made it."""
    op = run.steps[step_index].op
    process = op.process or 0
    for earlier in reversed(run.steps[:step_index]):
        mmap = earlier.op
        if mmap.name == "fork" and earlier.new_process == process:
            process = mmap.process or 0
        elif (mmap.name == "mmap" and earlier.result == "ok" and (mmap.process or 0) == process
                and (mmap.addr or 0) <= (op.addr or 0) < (mmap.addr or 0) + (mmap.length or 0)):
            return mmap.file is not None and _file_is_shmem(run, mmap.file)
    return False


def _swap_out_fallback(view: PageView, step: ModelStep) -> bool:
    """Whether reclaim split a swap-backed large folio that every page of it mapped, as only
    the swap-out fallback does (a partially mapped one is split on the kernel too): some page
    went to the zero page, or the pages went to swap but not to one aligned run of slots."""
    if view.order == 0 or view.lazyfree:
        return False
    keys = [key for key, other in step.before.items() if other.state == PRESENT and other.head == view.head]
    if len(keys) != 1 << view.order or not _one_pageout_batch(keys, step):
        return False
    after = [step.after.get(key) for key in sorted(keys, key=lambda key: step.before[key].pfn)]
    if any(other is not None and other.state == ZERO for other in after):
        return True
    if any(other is None or other.state != SWAP for other in after):
        return False   # refused, or not swapped out
    slots = [other.slot for other in after if other is not None]
    return slots[0] % len(slots) != 0 or slots != list(range(slots[0], slots[0] + len(slots)))


def _one_pageout_batch(keys: list[tuple[int, int]], step: ModelStep) -> bool:
    """Whether MADV_PAGEOUT's walk takes these entries of one folio as one batch: one VMA, and
    the same uffd-wp and contiguous bits (madvise_folio_pte_batch ignores only dirty, write and
    young); otherwise madvise_cold_or_pageout_pte_range splits the folio itself."""
    addrs = sorted(addr for _process, addr in keys)
    if not any(start <= addrs[0] and addrs[-1] < end for start, end, _anon_vma in step.vmas):
        return False
    return (len({step.before[key].uffd_wp for key in keys}) == 1
            and len({step.before[key].cont for key in keys}) == 1)


def realise(run: ModelRun) -> list[GuestOp]:
    """The guest ops of the script the model ran; UnsupportedScript names the first op without a
    faithful realisation (or line 0 for the script as a whole)."""
    reason = _script_reason(run)
    if reason:
        raise UnsupportedScript(Unsupported(0, "", reason))
    guest_ops: list[GuestOp] = []
    for step_index, step in enumerate(run.steps):
        op = step.op
        reason = _static_reason(op) or _model_reason(step_index, run)
        if reason:
            raise UnsupportedScript(Unsupported(op.line, format_op(op), reason))
        guest_ops.append(guest_op(op, step.new_process))
    return guest_ops


def guest_op(op: Op, new_process: int | None = None) -> GuestOp:
    """The runtime's form of one realisable op (fork needs the child's number)."""
    kind = GUEST_KINDS[op.name]
    process = op.process or 0
    rw = int((op.prot or "rw") == "rw")
    if op.name == "file":
        return GuestOp(kind, 0, length=op.length or 0, value=int(not op.shmem), arg=op.file or 0)
    if op.name == "sync":
        return GuestOp(kind, 0, arg=op.file or 0)
    if op.name == "mmap" and op.file is not None:
        return GuestOp(kind, process, op.addr or 0, op.length or 0, value=op.offset or 0,
                       arg=rw | int(op.shared) << 1 | (op.file + 1) << 2)
    if op.name in ("mmap", "mprotect"):
        return GuestOp(kind, process, op.addr or 0, op.length or 0, arg=rw)
    if op.name in ("munmap", "dontneed", "free", "uffd"):
        return GuestOp(kind, process, op.addr or 0, op.length or 0)
    if op.name == "wp":
        return GuestOp(kind, process, op.addr or 0, op.length or 0, arg=int(op.mode == "on"))
    if op.name in ("fault", "split", "read"):
        return GuestOp(kind, process, op.addr or 0, arg=op.order or 0)
    if op.name == "write":
        return GuestOp(kind, process, op.addr or 0, value=op.value or 0)
    if op.name in ("reclaim", "split_pmd"):
        return GuestOp(kind, process, op.addr or 0)
    if op.name == "pin":
        return GuestOp(kind, process, op.addr or 0, (op.nr_pages or 0) << PAGE_SHIFT, arg=rw)
    if op.name == "unpin":
        return GuestOp(kind, 0, arg=op.pin_id or 0)
    if op.name == "fork":
        return GuestOp(kind, process, arg=new_process if new_process is not None else -1)
    return GuestOp(kind, process)   # exit


def guest_script_text(guest_ops: list[GuestOp]) -> str:
    """The file the guest runtime's /init reads for one script."""
    return "".join(op.line() + "\n" for op in guest_ops)


_C_KIND_NAMES = {kind: f"RF_{name.upper()}" for name, kind in GUEST_KINDS.items()}


def export_c(script: Script, guest_ops: list[GuestOp], runtime_source: str, version: str) -> str:
    """A standalone C reproducer: the runtime with this script's op table and a main() to run it."""
    ops = script_ops(script)
    rows = []
    for op, guest in zip(ops, guest_ops, strict=True):
        rows.append(f"\t/* line {op.line}: {format_op(op)} */\n"
                    f"\t{{ {_C_KIND_NAMES[guest.kind]}, {guest.process}, {guest.addr:#x}, {guest.length:#x}, "
                    f"{guest.value:#x}, {guest.arg} }},\n")
    name = os.path.basename(script.path)
    return (
        f"/*\n * {name}: an rmapfuzz op script as a standalone program for a real arm64 kernel.\n"
        f" * Generated by rmapfuzz {version} (rmapfuzz export); the runtime below is fuzz/kernel/runtime.c.\n"
        " *\n * Build: aarch64-linux-gnu-gcc -static-pie -O2 -march=armv8.1-a -o repro repro.c\n"
        " * Run as root in a throwaway VM: it sets the anonymous THP sizes, khugepaged's limits,\n"
        " * overcommit and mmap_min_addr, turns on zram swap if no swap is on (a reclaim needs\n"
        " * swap), mounts debugfs (a split needs it), turns shmem THP off and writeback off but for\n"
        " * sync and reclaim. A regular file is made in the current directory, which must be on a\n"
        " * disk filesystem with readahead off. As /init of an initramfs it mounts proc, sys and dev\n"
        " * itself, and the ext4 disk /dev/vda for regular files (read_ahead_kb 0), and powers off at\n"
        " * the end. After each op it prints the op's errno\n"
        " * (R lines) and every page line that changed (P lines; the runtime's header comment\n"
        " * below says what each field is).\n */\n\n"
        f"{runtime_source}\n"
        "/* ------------------------------------------------------------------------- */\n"
        f"/* The script: {name} */\n\n"
        "static const struct rf_op script[] = {\n" + "".join(rows) + "};\n\n"
        "int main(void)\n{\n"
        "\tint booted_as_init = getpid() == 1;\n\n"
        "\tif (booted_as_init)\n"
        "\t\tsystem_start();\n"
        "\telse\n"
        "\t\tmount(\"debugfs\", \"/sys/kernel/debug\", \"debugfs\", 0, NULL);\n"
        "\tprint_kernel_release();\n"
        "\tmachine_setup();\n"
        f"\trun_script(\"{name}\", script, sizeof(script) / sizeof(script[0]));\n"
        "\tif (booted_as_init) {\n"
        "\t\tsync();\n"
        "\t\treboot(RB_POWER_OFF);\n"
        "\t}\n"
        "\treturn 0;\n}\n")
