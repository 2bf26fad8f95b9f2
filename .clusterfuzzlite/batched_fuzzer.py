"""OSS-Fuzz / ClusterFuzzLite fuzz target: batched against the reference (rmapfuzz).

A finding is an uncaught exception whose type and innermost frames name its signature and
whose message carries the minimised op script (fuzz/engine/target.py).
"""

import sys

import atheris

from fuzz.engine.target import FuzzTarget

IMPL = "batched"


def main() -> None:
    target = FuzzTarget.instrumented(IMPL)
    atheris.Setup(sys.argv, target.test_one_input, custom_mutator=target.custom_mutator())
    atheris.Fuzz()


if __name__ == "__main__":
    main()
