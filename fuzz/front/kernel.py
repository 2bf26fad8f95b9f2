"""The `rmapfuzz kernel` and `rmapfuzz export` subcommands (registered in fuzz/front/cli.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from fuzz.errors import UsageError
from fuzz.script.ops import Script

if TYPE_CHECKING:
    from fuzz.kernel.bridge import KernelReport

LoadInput = Callable[[str], Script]

EXIT_OK, EXIT_FINDING = 0, 1
C_SUFFIX = ".c"


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="op scripts (.ops) or raw fuzzer inputs")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="write FILE's reproducer as DIR/<name>.c (atomically); default: print it "
                             "(one FILE only)")


def command_export(args: argparse.Namespace, load_input: LoadInput,
                   write_atomically: Callable[[str, str], None]) -> int:
    """Each script as a standalone C reproducer; exit 2 naming the op if one has no faithful realisation."""
    from fuzz.kernel.bridge import export_script
    from fuzz.kernel.realise import UnsupportedScript

    if args.output is None and len(args.files) > 1:
        raise UsageError("export of several files needs -o DIR")
    scripts: list[Script] = [load_input(path) for path in args.files]
    programs = []
    for script in scripts:
        try:
            programs.append((script, export_script(script)))
        except UnsupportedScript as error:
            record = error.unsupported
            line = f"{script.path}:{record.line}" if record.line else script.path
            raise UsageError(f"{line}: cannot export"
                             + (f" '{record.op_text}'" if record.op_text else "") + f": {record.reason}") from error
    for script, program in programs:
        if args.output is None:
            print(program, end="")
            continue
        os.makedirs(args.output, exist_ok=True)
        name = os.path.splitext(os.path.basename(script.path))[0] + C_SUFFIX
        write_atomically(os.path.join(args.output, name), program)
        print(os.path.join(args.output, name))
    return EXIT_OK


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE", help="op scripts (.ops) or raw fuzzer inputs")
    parser.add_argument("--fuzz", type=int, metavar="N",
                        help="also draw N realisable scripts with the fuzz decoder; minimise and save each "
                             "unexplained disagreement under corpus/kernel/")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="with --fuzz: the seed (default 0)")
    parser.add_argument("--corpus", default="corpus/kernel", metavar="DIR",
                        help="with --fuzz: where disagreements are saved (default corpus/kernel)")
    parser.add_argument("--json", action="store_true", help="print the verdicts as one JSON object")
    parser.add_argument("--keep", metavar="DIR", help="keep the initramfs, the scripts and the boot's output here")
    parser.add_argument("--impl", default="reference", metavar="NAME",
                        help="the model implementation compared with the kernel (default reference)")
    parser.add_argument("--kernel", metavar="IMAGE",
                        help="boot this arm64 Image instead of Debian's (a kernel you built)")
    parser.add_argument("--modules", metavar="DIR",
                        help="with --kernel: the module tree holding zram, virtio_blk and ext4 (lib/modules/<release>)")
    parser.add_argument("--kernel-version", metavar="VERSION",
                        help="Debian's kernel of this version instead of the newest in sid")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="qemu's -cpu for the guest (default max,pauth-impdef=on,lpa2=off: the model's "
                             "48-bit, 4-level machine; 'max,pauth-impdef=on' boots with LPA2)")


def command_kernel(args: argparse.Namespace, load_input: LoadInput) -> int:
    """Run scripts on the model and on a real kernel; exit 1 on an unexplained disagreement."""
    from fuzz.implementation import REFERENCE_IMPL, load_implementation
    from fuzz.kernel import guest
    from fuzz.kernel.bridge import check_scripts

    if args.modules and not args.kernel:
        raise UsageError("--modules goes with --kernel")
    if not args.files and args.fuzz is None:
        raise UsageError("kernel needs FILE... or --fuzz N")
    if args.fuzz is not None and args.fuzz < 1:
        raise UsageError(f"--fuzz must be positive, not {args.fuzz}")
    if args.kernel and args.kernel_version:
        raise UsageError("--kernel and --kernel-version exclude each other")
    scripts = [load_input(path) for path in args.files]
    load_implementation(REFERENCE_IMPL)
    load_implementation(args.impl)
    guest.require_tools(("qemu-system-aarch64", guest.CROSS_CC))
    kernel = (guest.custom_kernel(args.kernel, args.modules) if args.kernel
              else guest.debian_kernel(args.kernel_version))
    if args.cpu:
        kernel = dataclasses.replace(kernel, cpu=args.cpu)
    status = EXIT_OK
    if scripts:
        report = check_scripts(scripts, kernel, impl=args.impl, keep=args.keep)
        _print_report(report, args.json, every_script=True)
        status = EXIT_FINDING if report.unexplained else status
    if args.fuzz is not None:
        from fuzz.kernel.campaign import fuzz_kernel

        report, findings = fuzz_kernel(args.fuzz, args.seed, kernel, impl=args.impl, corpus=args.corpus,
                                       keep=None if scripts else args.keep)
        _print_report(report, args.json, every_script=False)
        for finding in findings:
            print(f"  {finding.signature}: {finding.ops} ops (from {finding.from_ops}), {finding.path}")
        status = EXIT_FINDING if report.unexplained else status
    return status


def _print_report(report: KernelReport, as_json: bool, every_script: bool) -> None:
    from fuzz.kernel.bridge import AGREE, DEVIATION, UNSUPPORTED, report_json

    if as_json:
        print(report_json(report))
        return
    for verdict in report.verdicts:
        if every_script or verdict.status not in (AGREE, DEVIATION, UNSUPPORTED):
            print(verdict.report())
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(report.summary())
