"""Exceptions of the machine and the implementations, and result codes."""

from __future__ import annotations


class MachineBug(AssertionError):
    """A documented precondition or machine rule was violated (a VM_WARN_ON that fired)."""


class KernelWarning(MachineBug):
    """A VM_WARN_* (or VM_BUG_ON) in the kernel's own C fired under kernel-c: a finding of
    kind `warning`, named by the function and the kernel file and line where it fired."""

    def __init__(self, function: str, file: str, line: int, condition: str) -> None:
        super().__init__(f"{condition} in {function} at {file}:{line}")
        self.function = function
        self.file = file
        self.line = line
        self.condition = condition


def check(condition: object, message: str, *args: object) -> None:
    """Raise MachineBug(message % args) unless condition holds: the VM_WARN_ON_ONCE of this
    model. Formatting waits for a failure, so a check on a hot path costs only the test."""
    if not condition:
        raise MachineBug(message % args if args else message)


OK = "ok"
EFAULT = "EFAULT"
EBUSY = "EBUSY"
EAGAIN = "EAGAIN"
ENOENT = "ENOENT"
ENOMEM = "ENOMEM"
EINVAL = "EINVAL"
EBADF = "EBADF"     # a file the script never made (mmap, sync)
EEXIST = "EEXIST"   # `file Fn` of a file that exists (O_CREAT | O_EXCL); mmap over a mapping (MAP_FIXED_NOREPLACE)
SIGBUS = "SIGBUS"   # an access to a file mapping past the file's end (VM_FAULT_SIGBUS)
UFFD = "UFFD"      # a write trapped by userfaultfd write-protection (handle_userfault; SIGBUS here)
RESULTS = (OK, EFAULT, EBUSY, EAGAIN, ENOENT, ENOMEM, EINVAL, EBADF, EEXIST, SIGBUS, UFFD)
