"""Tests of the op-script language: parser, printer and their round trip (SPEC §4)."""

from __future__ import annotations

import pickle
import random

import pytest

from fuzz.implementation import OP_NAMES, RESULT_NAMES
from fuzz.script.ops import (
    EXPECT_ENTRY_KEYS,
    EXPECT_PIN_KEYS,
    Expect,
    Op,
    Script,
    ScriptError,
    format_expect,
    format_op,
    format_script,
    parse_file,
    parse_script,
)


def only_step(text: str) -> Op | Expect:
    steps = parse_script(text).steps
    assert len(steps) == 1
    return steps[0]


def error_of(text: str, path: str = "t.ops") -> ScriptError:
    with pytest.raises(ScriptError) as info:
        parse_script(text, path)
    return info.value


def assert_error(text: str, line: int, message: str) -> None:
    error = error_of(text)
    assert (error.path, error.line, error.message) == ("t.ops", line, message)
    assert str(error) == f"t.ops:{line}: {message}"


# --- every op -------------------------------------------------------------

@pytest.mark.parametrize("text, op", [
    ("mmap P0 0x200000 0x2000 ro", Op("mmap", 0, 0x200000, length=0x2000, prot="ro")),
    ("munmap P0 0x1000 4096", Op("munmap", 0, 0x1000, length=0x1000)),
    ("dontneed P0 0x1000 8K", Op("dontneed", 0, 0x1000, length=0x2000)),
    ("free P0 0x1000 8K", Op("free", 0, 0x1000, length=0x2000)),
    ("mprotect P0 0x1000 0x1000 ro", Op("mprotect", 0, 0x1000, length=0x1000, prot="ro")),
    ("mprotect P0 0x1000 0x1000 rw", Op("mprotect", 0, 0x1000, length=0x1000, prot="rw")),
    ("fault P0 0x10000 order=4", Op("fault", 0, 0x10000, order=4)),
    ("write P0 0x1000 0xffffffffffffffff", Op("write", 0, 0x1000, value=2**64 - 1)),
    ("read P0 0x1000", Op("read", 0, 0x1000)),
    ("read P0 0x1000 order=0", Op("read", 0, 0x1000)),
    ("read P0 0x1000 order=9", Op("read", 0, 0x1000, order=9)),
    ("pin P0 0x1000 16 rw", Op("pin", 0, 0x1000, nr_pages=16, prot="rw")),
    ("pin P0 0x1000 0 ro", Op("pin", 0, 0x1000, nr_pages=0, prot="ro")),
    ("unpin 7", Op("unpin", pin_id=7)),
    ("fork P0", Op("fork", 0)),
    ("exit P0", Op("exit", 0)),
    ("reclaim P0 0x1000", Op("reclaim", 0, 0x1000)),
    ("try_to_unmap P0 0x1000", Op("try_to_unmap", 0, 0x1000)),
    ("split_pmd P0 0x200000", Op("split_pmd", 0, 0x200000)),
    ("split P0 0x200000 order=0", Op("split", 0, 0x200000, order=0)),
    ("uffd P0 0x200000 64K", Op("uffd", 0, 0x200000, length=0x10000)),
    ("wp P0 0x200000 8K on", Op("wp", 0, 0x200000, length=0x2000, mode="on")),
    ("wp P0 0x200000 8K OFF", Op("wp", 0, 0x200000, length=0x2000, mode="off")),
])
def test_each_op_parses_to_its_fields(text: str, op: Op) -> None:
    assert only_step(text) == op


def test_every_op_name_is_covered_by_the_table() -> None:
    assert set(OP_NAMES) == {"mmap", "munmap", "dontneed", "free", "mprotect", "fault", "write",
                             "read", "pin", "unpin", "fork", "exit", "reclaim",
                             "try_to_unmap", "split_pmd", "split", "file", "sync", "uffd", "wp"}


def test_mmap_prot_defaults_to_rw() -> None:
    assert only_step("mmap P0 0x1000 0x1000").prot == "rw"


def test_fault_order_defaults_to_zero() -> None:
    assert only_step("fault P0 0x1000").order == 0


def test_fault_accepts_orders_the_kernel_rejects() -> None:
    assert only_step("fault P0 0x1000 order=63").order == 63
    assert only_step("split P0 0x1000 order=10").order == 10


def test_steps_remember_their_source_line() -> None:
    steps = parse_script("\n# c\nmmap P0 0x1000 4K\n\nexpect P0 0x1000 state=none\n").steps
    assert [step.line for step in steps] == [3, 5]


def test_line_number_is_not_part_of_equality() -> None:
    assert Op("read", 0, 0x1000, line=3) == Op("read", 0, 0x1000, line=9)
    assert hash(Op("read", 0, 0x1000, line=3)) == hash(Op("read", 0, 0x1000))
    assert Expect("pin", pin_id=0, keys=(("value", 1),), line=2) == \
        Expect("pin", pin_id=0, keys=(("value", 1),))


# --- lexical ---------------------------------------------------------------

def test_comments_and_blank_lines_are_ignored() -> None:
    script = parse_script(
        "# header\n"
        "\n"
        "   \t  \n"
        "mmap P0 0x1000 4K   # trailing comment\n"
        "read P0 0x1000#glued comment\n"
        "#read P0 0x1000\n")
    assert script.steps == [Op("mmap", 0, 0x1000, length=0x1000, prot="rw"),
                            Op("read", 0, 0x1000)]
    assert script.frames is None


def test_crlf_line_endings_are_accepted() -> None:
    assert parse_script("mmap P0 0x1000 4K\r\nread P0 0x1000\r\n").steps[1] == \
        Op("read", 0, 0x1000)


def test_byte_order_mark_is_ignored() -> None:
    assert parse_script("\ufeffframes 8\n").frames == 8


def test_tokens_may_be_separated_by_any_whitespace() -> None:
    assert only_step("\tmmap   P0\t0x1000  4K  ro ") == \
        Op("mmap", 0, 0x1000, length=0x1000, prot="ro")


def test_hex_and_decimal_numbers() -> None:
    assert only_step("write P0 4096 255").addr == 0x1000
    assert only_step("write P0 0x1000 0xFF").value == 255
    assert only_step("write P0 0X1000 0xAbC").value == 0xABC
    assert only_step("unpin 0x10").pin_id == 16


@pytest.mark.parametrize("text, length", [
    ("4K", 0x1000), ("8k", 0x2000), ("2M", 0x200000), ("1G", 1 << 30),
    ("0x10K", 0x4000), ("0x1000", 0x1000), ("12288", 0x3000),
])
def test_lengths_take_k_m_g_suffixes(text: str, length: int) -> None:
    assert only_step(f"munmap P0 0 {text}").length == length


# --- static process tracking -----------------------------------------------

def test_fork_children_are_numbered_in_order() -> None:
    steps = parse_script("fork P0\nfork P0\nfork P1\nread P3 0x1000\n").steps
    assert steps[3] == Op("read", 3, 0x1000)


def test_child_numbers_are_never_reused_after_exit() -> None:
    steps = parse_script("fork P0\nexit P1\nfork P0\nread P2 0x1000\n").steps
    assert steps[-1].process == 2
    assert_error("fork P0\nexit P1\nfork P0\nread P1 0x1000\n", 4, "unknown process P1")


def test_process_used_after_exit_is_an_error() -> None:
    assert_error("fork P0\nexit P0\nread P1 0x1000\nread P0 0x1000\n", 4, "unknown process P0")
    assert_error("exit P0\nfork P0\n", 2, "unknown process P0")
    assert_error("exit P0\nexit P0\n", 2, "unknown process P0")


def test_process_never_forked_is_an_error() -> None:
    assert_error("mmap P0 0x1000 4K\nmmap P3 0x1000 4K\n", 2, "unknown process P3")


def test_expect_names_only_live_processes() -> None:
    assert_error("fork P0\nexit P1\nexpect P1 0x1000 state=none\n", 3, "unknown process P1")
    assert_error("expect P0 0x1000 same-page=P1\n", 1, "unknown process P1")
    assert_error("fork P0\nexit P1\nexpect P0 0x1000 distinct-page=P1\n", 3,
                 "unknown process P1")


def test_pins_outlive_their_process_in_expects() -> None:
    steps = parse_script("pin P0 0 1 rw\nexit P0\nunpin 0\nexpect pin 0 coherent=no\n").steps
    assert steps[3] == Expect("pin", pin_id=0, keys=(("coherent", "no"),))


@pytest.mark.parametrize("word", ["p0", "P", "P-1", "P+1", "Px", "P0x1", "P1_0", "0"])
def test_malformed_process_is_an_error(word: str) -> None:
    assert_error(f"read {word} 0x1000", 1, f"bad process {word!r}")


# --- frames ----------------------------------------------------------------

def test_frames_on_the_first_line_sets_the_machine_size() -> None:
    script = parse_script("# size\n\nframes 0x1000\nmmap P0 0x1000 4K\n")
    assert script.frames == 4096
    assert script.steps == [Op("mmap", 0, 0x1000, length=0x1000, prot="rw")]


def test_frames_after_another_line_is_an_error() -> None:
    assert_error("mmap P0 0x1000 4K\nframes 8\n", 2, "frames must be the first line")
    assert_error("frames 8\n# again\nframes 8\n", 3, "frames must be the first line")


def test_frames_after_an_expect_is_an_error() -> None:
    assert_error("expect P0 0x1000 state=none\nframes 8\n", 2, "frames must be the first line")


@pytest.mark.parametrize("text, message", [
    ("frames 0", "frames 0 out of range 1..16777216"),
    ("frames 16777217", "frames 16777217 out of range 1..16777216"),
    ("frames", "frames takes 1 argument, got 0"),
    ("frames 1 2", "frames takes 1 argument, got 2"),
    ("frames many", "bad number 'many'"),
])
def test_bad_frames_line_is_an_error(text: str, message: str) -> None:
    assert_error(text, 1, message)


def test_frames_limit_is_inclusive() -> None:
    assert parse_script("frames 16777216").frames == 1 << 24
    assert parse_script("frames 1").frames == 1


# --- op errors -------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("mmapp P0 0x1000 4K", "unknown op 'mmapp'"),
    ("MMAP P0 0x1000 4K", "unknown op 'MMAP'"),
    ("mmap P0 0x1000", "mmap takes 3 to 7 arguments, got 2"),
    ("mmap P0 0x1000 4K rw file=F0 offset=0 shared x", "mmap takes 3 to 7 arguments, got 8"),
    ("mmap P0 0x1000 4K rw x", "bad mmap argument 'x': want rw|ro, file=Fn, offset=OFF, shared"),
    ("mmap P0 0x1000 4K rw shared", "offset= and shared need file=Fn (anonymous memory is private)"),
    ("mmap P0 0x1000 4K file=F0 offset=0x10", "address 0x10 is not 4 KiB aligned"),
    ("mmap P0 0x1000 4K file=G0", "bad file 'G0': want Fn"),
    ("file F0", "file takes 2 or 3 arguments, got 1"),
    ("file F0 4K tmpfs", "bad file kind 'tmpfs': want shmem or nothing"),
    ("sync", "sync takes 1 argument, got 0"),
    ("sync P0", "bad file 'P0': want Fn"),
    ("munmap P0 0x1000", "munmap takes 3 arguments, got 2"),
    ("mprotect P0 0x1000 4K", "mprotect takes 4 arguments, got 3"),
    ("fault P0", "fault takes 2 or 3 arguments, got 1"),
    ("split P0 0x1000", "split takes 3 arguments, got 2"),
    ("unpin", "unpin takes 1 argument, got 0"),
    ("fork P0 P0", "fork takes 1 argument, got 2"),
    ("read P0 0x1000 7", "expected order=K, got '7'"),
    ("read P0 0x1000 order=9 7", "read takes 2 or 3 arguments, got 4"),
])
def test_wrong_op_or_argument_count_is_an_error(text: str, message: str) -> None:
    assert_error(text, 1, message)


@pytest.mark.parametrize("text, message", [
    ("read P0 zz", "bad number 'zz'"),
    ("read P0 0x", "bad number '0x'"),
    ("read P0 -4096", "bad number '-4096'"),
    ("read P0 +4096", "bad number '+4096'"),
    ("read P0 4_096", "bad number '4_096'"),
    ("read P0 0x1g00", "bad number '0x1g00'"),
    ("read P0 2M", "bad number '2M'"),
    ("read P0 \u0664\u0660\u0669\u0666", "bad number '\u0664\u0660\u0669\u0666'"),
    ("unpin -1", "bad number '-1'"),
    ("pin P0 0x1000 x rw", "bad number 'x'"),
    ("munmap P0 0x1000 4Q", "bad length '4Q'"),
    ("munmap P0 0x1000 K", "bad length 'K'"),
    ("munmap P0 0x1000 0xK", "bad length '0xK'"),
])
def test_bad_number_is_an_error(text: str, message: str) -> None:
    assert_error(text, 1, message)


@pytest.mark.parametrize("text, message", [
    ("read P0 0x1001", "address 0x1001 is not 4 KiB aligned"),
    ("mmap P0 0x800 4K", "address 0x800 is not 4 KiB aligned"),
    ("munmap P0 0x1000 0x1800", "length 0x1800 is not 4 KiB aligned"),
    ("munmap P0 0x1000 1K", "length 0x400 is not 4 KiB aligned"),
    ("munmap P0 0x1000 0", "length must be positive"),
    ("munmap P0 0x1000 0K", "length must be positive"),
    ("read P0 0x1000000000000", "address 0x1000000000000 is not below 2^48"),
    ("mmap P0 0xfffffffff000 0x2000", "range ends above 2^48"),
    ("dontneed P0 0 0x1000000001000", "range ends above 2^48"),
    ("free P0 0x1000 0x1800", "length 0x1800 is not 4 KiB aligned"),
    ("free P0 0x1000", "free takes 3 arguments, got 2"),
    ("pin P0 0xfffffffff000 2 rw", "range ends above 2^48"),
])
def test_bad_address_or_length_is_an_error(text: str, message: str) -> None:
    assert_error(text, 1, message)


def test_ranges_may_end_exactly_at_2_pow_48() -> None:
    assert only_step("mmap P0 0xfffffffff000 4K").length == 0x1000
    assert only_step(f"munmap P0 0 {1 << 48}").length == 1 << 48
    assert only_step("pin P0 0xffffffffe000 2 ro").nr_pages == 2
    assert only_step("read P0 0xfffffffff000").addr == 0xfffffffff000


@pytest.mark.parametrize("text, message", [
    ("mmap P0 0x1000 4K rx", "bad prot 'rx' (rw|ro)"),
    ("mprotect P0 0x1000 4K none", "bad prot 'none' (rw|ro)"),
    ("pin P0 0x1000 1 w", "bad pin mode 'w' (rw|ro)"),
    ("fault P0 0x1000 4", "expected order=K, got '4'"),
    ("split P0 0x1000 ord=2", "expected order=K, got 'ord=2'"),
    ("fault P0 0x1000 order=64", "order 64 out of range 0..63"),
    ("split P0 0x1000 order=", "bad number ''"),
    ("write P0 0x1000 0x10000000000000000", "value 0x10000000000000000 out of range 0..2^64-1"),
    ("wp P0 0x1000 4K yes", "bad wp mode 'yes' (on|off)"),
    ("wp P0 0x1000 4K", "wp takes 4 arguments, got 3"),
    ("wp P0 0x1000 0x1800 on", "length 0x1800 is not 4 KiB aligned"),
    ("wp P0 0xfffffffff000 0x2000 off", "range ends above 2^48"),
    ("uffd P0 0x1000", "uffd takes 3 arguments, got 2"),
    ("uffd P0 0x1000 4K on", "uffd takes 3 arguments, got 4"),
    ("uffd P0 0x1001 4K", "address 0x1001 is not 4 KiB aligned"),
    ("uffd P1 0x1000 4K", "unknown process P1"),
    ("expect P0 0x1000 marker=maybe", "bad value 'maybe' for marker (yes|no)"),
    ("expect P0 0x1000 uffd-wp=1", "bad value '1' for uffd-wp (yes|no)"),
])
def test_bad_op_argument_is_an_error(text: str, message: str) -> None:
    assert_error(text, 1, message)


def test_error_names_the_offending_line() -> None:
    text = "# comment\n\nmmap P0 0x1000 4K\nread P0 0x1000\nread P0 0x1001\nread P0 0x1000\n"
    assert_error(text, 5, "address 0x1001 is not 4 KiB aligned")


def test_error_quotes_huge_tokens_briefly() -> None:
    error = error_of("x" * 10000)
    assert error.message == f"unknown op '{'x' * 40}...'"


@pytest.mark.parametrize("text", [
    "frames 0x" + "f" * 200_000,
    "frames " + "9" * 4000,
    "read P0 0x" + "f" * 200_000,
    "read P0 0x" + "f" * 199_999 + "1",
    "mmap P0 0x0 0x" + "f" * 200_000 + "1",
    "write P0 0x0 0x" + "f" * 200_000,
    "fault P0 0x0 order=0x" + "f" * 200_000,
    "read P" + "9" * 4000 + " 0x0",
    "read P0 0x0 " + "9" * 200_000,
    "pin P0 0 1 rw\nexpect pin 0x" + "f" * 200_000 + " value=1",
])
def test_error_caps_echoed_numbers(text: str) -> None:
    """A 200,000-digit number is not echoed whole, whether the message quotes the token or
    the number it parsed to."""
    error = error_of(text)
    assert len(error.message) < 150, error.message[:300]


def test_error_escapes_control_characters() -> None:
    assert error_of("read\x00 P0 0x1000").message == "unknown op 'read\\x00'"


def test_script_error_pickles() -> None:
    error = pickle.loads(pickle.dumps(error_of("bogus")))
    assert (error.path, error.line, error.message) == ("t.ops", 1, "unknown op 'bogus'")
    assert str(error) == "t.ops:1: unknown op 'bogus'"


# --- expects ---------------------------------------------------------------

def test_entry_expect_normalises_every_key() -> None:
    text = ("fork P0\n"
            "expect P0 0x200000 value=0x7 state=Present exclusive=YES writable=no dirty=yes "
            "young=no level=PTE cont=yes order=4 mapcount=2 shared=yes pinned=no "
            "same-page=P1 distinct-page=P0 lazyfree=Yes folio-dirty=no file=F2 uffd-wp=No marker=yes\n")
    expect = parse_script(text).steps[1]
    assert expect == Expect("entry", process=0, addr=0x200000, keys=(
        ("value", 7), ("state", "present"), ("exclusive", "yes"), ("writable", "no"),
        ("dirty", "yes"), ("young", "no"), ("level", "pte"), ("cont", "yes"), ("order", 4),
        ("mapcount", 2), ("shared", "yes"), ("pinned", "no"), ("same-page", 1),
        ("distinct-page", 0), ("lazyfree", "yes"), ("folio-dirty", "no"), ("file", 2), ("uffd-wp", "no"),
        ("marker", "yes")))
    assert {key for key, _ in expect.keys} == set(EXPECT_ENTRY_KEYS)


def test_expect_keys_keep_source_order() -> None:
    keys = only_step("expect P0 0x1000 young=no state=swap value=3").keys
    assert keys == (("young", "no"), ("state", "swap"), ("value", 3))


def test_pin_expect() -> None:
    expect = parse_script("pin P0 0 1 rw\n" * 4 + "expect pin 3 value=0xdeadbeef coherent=no").steps[-1]
    assert expect == Expect("pin", pin_id=3, keys=(("value", 0xDEADBEEF), ("coherent", "no")))
    assert {key for key, _ in expect.keys} == set(EXPECT_PIN_KEYS)


@pytest.mark.parametrize("name", RESULT_NAMES)
def test_result_expect_takes_every_result_name(name: str) -> None:
    steps = parse_script(f"read P0 0x1000\nexpect result={name}\n").steps
    assert steps[1] == Expect("result", keys=(("result", name),))


def test_result_names_are_normalised_to_their_listed_case() -> None:
    steps = parse_script("read P0 0x1000\nexpect result=ebusy\nexpect result=OK\n").steps
    assert [step.keys for step in steps[1:]] == [(("result", "EBUSY"),), (("result", "ok"),)]


def test_result_expect_may_follow_other_expects() -> None:
    steps = parse_script("read P0 0x1000\nexpect P0 0x1000 value=0\nexpect result=ok\n").steps
    assert steps[2].kind == "result"


@pytest.mark.parametrize("text, line, message", [
    ("expect result=ok", 1, "expect result before any op"),
    ("read P0 0\nexpect P0 0x1000 colour=red", 2, "unknown expect key 'colour'"),
    ("expect P0 0x1000 exclusive=maybe", 1, "bad value 'maybe' for exclusive (yes|no)"),
    ("expect P0 0x1000 state=none state=swap", 1, "expect key 'state' given twice"),
    ("expect P0 0x1000", 1, "expect needs at least one key=value"),
    ("pin P0 0 1 rw\nexpect pin 0", 2, "expect needs at least one key=value"),
    ("expect pin", 1, "expect pin needs a pin id"),
    ("expect pin x value=1", 1, "bad number 'x'"),
    ("expect P0", 1, "expect P0 needs an address"),
    ("expect P0 0x1001 value=1", 1, "address 0x1001 is not 4 KiB aligned"),
    ("expect P2 0x1000 value=1", 1, "unknown process P2"),
    ("expect", 1, "expect needs 'P va key=value', 'pin ID key=value' or 'result=NAME'"),
    ("expect value=1", 1, "expect needs 'P va', 'pin ID' or 'result=' before 'value=1'"),
    ("expect P0 0x1000 state", 1, "expected key=value, got 'state'"),
    ("expect P0 0x1000 =yes", 1, "expected key=value, got '=yes'"),
    ("expect P0 0x1000 coherent=yes", 1, "expect key 'coherent' is not valid for an entry expect"),
    ("expect P0 0x1000 result=ok", 1, "expect key 'result' is not valid for an entry expect"),
    ("pin P0 0 1 rw\nexpect pin 0 state=none", 2, "expect key 'state' is not valid for expect pin"),
    ("read P0 0\nexpect result=ok value=1", 2, "expect key 'value' is not valid for expect result"),
    ("read P0 0\nexpect result=ok result=ok", 2, "expect key 'result' given twice"),
    ("read P0 0\nexpect result=EPERM", 2,
     "bad value 'EPERM' for result (ok|EFAULT|EBUSY|EAGAIN|ENOENT|ENOMEM|EINVAL|EBADF|EEXIST|SIGBUS|UFFD)"),
    ("expect P0 0x1000 state=gone", 1, "bad value 'gone' for state (present|swap|none|zero)"),
    ("expect P0 0x1000 level=pud", 1, "bad value 'pud' for level (pte|pmd)"),
    ("expect P0 0x1000 order=10", 1, "bad value '10' for order (0..9)"),
    ("expect P0 0x1000 mapcount=-1", 1, "bad value '-1' for mapcount (integer >= 0)"),
    ("expect P0 0x1000 value=0x10000000000000000", 1,
     "bad value '0x10000000000000000' for value (0..2^64-1)"),
    ("expect P0 0x1000 value=", 1, "bad value '' for value (0..2^64-1)"),
    ("expect P0 0x1000 same-page=1", 1, "bad value '1' for same-page (Pn)"),
    ("pin P0 0 1 rw\nexpect pin 0 coherent=1", 2, "bad value '1' for coherent (yes|no)"),
    ("expect pin 0 value=1", 1, "expect pin 0 names a pin id never issued (0 pin ops come before it)"),
    ("pin P0 0 1 rw\nexpect pin 1 value=1", 2,
     "expect pin 1 names a pin id never issued (1 pin ops come before it)"),
])
def test_bad_expect_is_an_error(text: str, line: int, message: str) -> None:
    assert_error(text, line, message)


# --- files -----------------------------------------------------------------

def test_parse_file_reads_a_script(tmp_path) -> None:
    path = tmp_path / "a.ops"
    path.write_text("frames 64\nmmap P0 0x1000 4K\n", encoding="utf-8")
    script = parse_file(str(path))
    assert (script.path, script.frames) == (str(path), 64)
    assert script.steps == [Op("mmap", 0, 0x1000, length=0x1000, prot="rw")]


def test_parse_file_errors_carry_the_file_path(tmp_path) -> None:
    path = tmp_path / "bad.ops"
    path.write_text("mmap P0 0x1000 4K\nread P9 0x1000\n")
    with pytest.raises(ScriptError) as info:
        parse_file(str(path))
    assert str(info.value) == f"{path}:2: unknown process P9"


def test_invalid_utf8_reports_the_line_of_the_first_bad_byte(tmp_path) -> None:
    path = tmp_path / "bad.ops"
    path.write_bytes(b"# caf\xc3\xa9 is fine\nmmap P0 0x1000 4K\n# \xff bad\nread P0 \xfe\n")
    with pytest.raises(ScriptError) as info:
        parse_file(str(path))
    assert (info.value.line, info.value.message) == (3, "invalid UTF-8")
    assert str(info.value) == f"{path}:3: invalid UTF-8"


def test_unreadable_file_is_an_error_on_line_0(tmp_path) -> None:
    path = tmp_path / "missing.ops"
    with pytest.raises(ScriptError) as info:
        parse_file(str(path))
    assert info.value.line == 0
    assert str(info.value).startswith(f"{path}:0: cannot read")


# --- printer and round trip ------------------------------------------------

EVERY_OP_AND_KEY = """\
frames 1024
mmap P0 0x200000 2M            # default prot
mmap P0 0x600000 0x3000 ro
munmap P0 0x602000 4K
mprotect P0 0x600000 8K rw
dontneed P0 0x601000 4096
free P0 0x602000 8K
fault P0 0x200000 order=9
fault P0 0x600000
write P0 0x200000 7
write P0 0x201000 0xfedcba9876543210
read P0 0x600000
pin P0 0x200000 2 ro
expect result=ok
expect pin 0 value=7 coherent=yes
pin P0 0x200000 0 rw
expect result=EINVAL
fork P0
expect P1 0x200000 value=7 state=present exclusive=no writable=no dirty=yes young=no \
level=pmd order=9 mapcount=2 shared=yes pinned=yes same-page=P0
expect P1 0x200000 distinct-page=P0 cont=no level=pte lazyfree=no folio-dirty=no file=none uffd-wp=no marker=no
file F0 64K
file F1 8K shmem
mmap P0 0x800000 64K ro file=F0 offset=0x4000 shared
mmap P0 0x900000 8K file=F1
sync F0
expect P0 0x800000 file=F0
uffd P1 0x200000 2M
wp P1 0x200000 64K on
wp P1 0x200000 4K off
split_pmd P0 0x200000
split P0 0x200000 order=4
reclaim P0 0x210000
try_to_unmap P0 0x220000
expect P0 0x220000 state=swap exclusive=yes value=0
unpin 0
fork P1
exit P1
expect P2 0x200000 state=none
"""


def test_round_trip_over_every_op_and_every_expect_key() -> None:
    script = parse_script(EVERY_OP_AND_KEY.replace("\\\n", ""))
    assert {step.name for step in script.steps if isinstance(step, Op)} == set(OP_NAMES)
    entry_keys = {key for step in script.steps
                  if isinstance(step, Expect) and step.kind == "entry" for key, _ in step.keys}
    assert entry_keys == set(EXPECT_ENTRY_KEYS)
    assert {step.kind for step in script.steps if isinstance(step, Expect)} == \
        {"entry", "pin", "result"}
    text = format_script(script)
    again = parse_script(text)
    assert again.steps == script.steps
    assert again.frames == script.frames == 1024
    assert format_script(again) == text


def test_printer_output_is_canonical() -> None:
    text = ("mmap P0 0x200000 2097152\n"
            "munmap P0 0x200000 0x3000\n"
            "mprotect P0 0x200000 0x40000000 RO\n"
            "fault P0 0x200000\n"
            "write P0 0x200000 0xff\n"
            "write P0 0x200000 65536\n"
            "pin P0 0x200000 3 RW\n"
            "fork P0\n"
            "expect P1 0x200000 same-page=P0 value=0x10 young=YES\n")
    assert format_script(parse_script(text)) == (
        "mmap P0 0x200000 2M rw\n"
        "munmap P0 0x200000 12K\n"
        "mprotect P0 0x200000 1G ro\n"
        "fault P0 0x200000 order=0\n"
        "write P0 0x200000 255\n"
        "write P0 0x200000 0x10000\n"
        "pin P0 0x200000 3 rw\n"
        "fork P0\n"
        "expect P1 0x200000 same-page=P0 value=16 young=yes\n")


def test_format_of_single_steps() -> None:
    assert format_op(Op("unpin", pin_id=4)) == "unpin 4"
    assert format_op(Op("split", 2, 0x1000, order=0)) == "split P2 0x1000 order=0"
    assert format_expect(Expect("result", keys=(("result", "ENOMEM"),))) == "expect result=ENOMEM"
    assert format_expect(Expect("pin", pin_id=1, keys=(("coherent", "no"),))) == \
        "expect pin 1 coherent=no"


def test_format_script_without_frames_or_steps() -> None:
    assert format_script(Script("x", None, [])) == ""
    assert format_script(Script("x", 5, [])) == "frames 5\n"


def test_format_op_refuses_a_missing_field() -> None:
    with pytest.raises(ValueError):
        format_op(Op("fault", 0, 0x1000))
    with pytest.raises(ValueError):
        format_op(Op("frobnicate", 0, 0x1000))


def random_script(rng: random.Random) -> Script:
    """A valid random script built from the data model, tracking live processes."""
    live, next_child, steps = [0], 1, []
    have_op = False
    nr_pin_ops = 0

    def addr() -> int:
        return rng.choice([0, 0x1000, 0x200000, rng.randrange(1 << 35) << 12])  # room below 2^48

    for _ in range(rng.randrange(1, 40)):
        if not live:
            break
        process = rng.choice(live)
        name = rng.choice(OP_NAMES + ("expect",) * 3)
        if name == "expect":
            kind = rng.choice(["entry", "result"] if have_op else ["entry"]
                              + (["pin"] if nr_pin_ops else []))
            if kind == "result":
                steps.append(Expect("result", keys=(("result", rng.choice(RESULT_NAMES)),)))
            elif kind == "pin":
                steps.append(Expect("pin", pin_id=rng.randrange(nr_pin_ops),
                                    keys=(("coherent", "yes"), ("value", rng.randrange(1 << 64)))))
            else:
                keys = rng.sample([("state", "swap"), ("order", 9), ("mapcount", 0),
                                   ("same-page", rng.choice(live)), ("dirty", "no"),
                                   ("value", rng.randrange(1 << 20))], rng.randrange(1, 4))
                steps.append(Expect("entry", process=process, addr=addr(), keys=tuple(keys)))
            continue
        have_op = True
        va = addr()
        length = rng.randrange(1, 1 << 10) << 12
        if name == "mmap" and rng.random() < 0.5:
            op = Op(name, process, va, length=length, prot=rng.choice(["rw", "ro"]), file=rng.randrange(4),
                    offset=rng.choice([None, 0x1000, 0x10000]), shared=rng.random() < 0.5)
        elif name == "mmap":
            op = Op(name, process, va, length=length, prot=rng.choice(["rw", "ro"]))
        elif name == "file":
            op = Op(name, file=rng.randrange(4), length=length, shmem=rng.random() < 0.5)
        elif name == "sync":
            op = Op(name, file=rng.randrange(4))
        elif name in ("munmap", "dontneed", "free", "uffd"):
            op = Op(name, process, va, length=length)
        elif name == "wp":
            op = Op(name, process, va, length=length, mode=rng.choice(["on", "off"]))
        elif name == "mprotect":
            op = Op(name, process, va, length=length, prot=rng.choice(["rw", "ro"]))
        elif name in ("fault", "split"):
            op = Op(name, process, va, order=rng.randrange(64))
        elif name == "write":
            op = Op(name, process, va, value=rng.randrange(1 << 64))
        elif name == "pin":
            op = Op(name, process, va, nr_pages=rng.randrange(600), prot=rng.choice(["rw", "ro"]))
            nr_pin_ops += 1
        elif name == "unpin":
            op = Op(name, pin_id=rng.randrange(10))
        elif name == "fork":
            op = Op(name, process)
            live.append(next_child)
            next_child += 1
        elif name == "exit":
            op = Op(name, process)
            live.remove(process)
        else:
            op = Op(name, process, va)
        steps.append(op)
    return Script("<random>", rng.choice([None, 1, 4096, 1 << 24]), steps)


def test_round_trip_over_random_valid_scripts() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        script = random_script(rng)
        again = parse_script(format_script(script))
        assert again.steps == script.steps
        assert again.frames == script.frames
