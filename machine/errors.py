"""Exceptions of the machine and the implementations, and result codes."""

from __future__ import annotations


class MachineBug(AssertionError):
    """A documented precondition or machine rule was violated (a VM_WARN_ON that fired)."""


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
RESULTS = (OK, EFAULT, EBUSY, EAGAIN, ENOENT, ENOMEM, EINVAL)
