"""The kernel interface: one op table, dispatched to the Kernel method of the same name."""

from __future__ import annotations

import inspect

import pytest

from fuzz.implementation import (
    OP_ARGUMENTS,
    OP_DISPATCH,
    OP_NAMES,
    RESULT_NAMES,
    Kernel,
    load_implementation,
)
from fuzz.script.ops import Op
from machine.errors import RESULTS

FIELD_VALUES = {"process": 3, "addr": 0x201000, "length": 0x4000, "prot": "ro", "order": 4,
                "value": 7, "nr_pages": 17, "pin_id": 2, "file": 1, "offset": 0x8000, "shared": True,
                "shmem": True, "mode": "on"}


class RecordingKernel:
    """Answers every op with its name and arguments instead of a result code."""

    def __getattr__(self, name: str):
        return lambda *args: (name, args)


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_calls_the_kernel_method_of_its_name_with_its_fields_in_order(name):
    fields = OP_ARGUMENTS[name]
    op = Op(name, **{field: FIELD_VALUES[field] for field in fields})
    assert OP_DISPATCH[name](RecordingKernel(), op) == (name, tuple(FIELD_VALUES[field] for field in fields))


def test_the_dispatch_table_and_the_protocol_cover_exactly_the_op_table():
    protocol_methods = {name for name, _ in inspect.getmembers(Kernel, inspect.isfunction)
                        if not name.startswith("_")}
    assert tuple(OP_DISPATCH) == OP_NAMES
    assert protocol_methods == set(OP_NAMES)


@pytest.mark.parametrize("impl", ["reference", "batched", "fuzz.canaries.share_nr_pages_zero"])
def test_every_implementation_provides_every_op_with_the_protocols_parameters(impl):
    kernel_class = load_implementation(impl).Kernel
    for name in OP_NAMES:
        wanted = list(inspect.signature(getattr(Kernel, name)).parameters)
        assert list(inspect.signature(getattr(kernel_class, name)).parameters) == wanted, name


def test_the_result_codes_are_the_machines():
    assert RESULT_NAMES is RESULTS


def test_an_op_without_prot_or_order_gets_the_defaults():
    assert OP_DISPATCH["mmap"](RecordingKernel(), Op("mmap", process=0, addr=0, length=4096)) == \
        ("mmap", (0, 0, 4096, "rw"))
    assert OP_DISPATCH["fault"](RecordingKernel(), Op("fault", process=0, addr=0)) == ("fault", (0, 0, 0))
