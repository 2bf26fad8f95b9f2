"""An implementation for the campaign tests: batched/, except that a fork kills the fuzzing
process (SIGABRT, a crash libFuzzer sees), or hangs when RMAPFUZZ_TEST_FORK=hang."""

import os
import time

import batched


class Kernel(batched.Kernel):
    def fork(self, pid):
        if os.environ.get("RMAPFUZZ_TEST_FORK") == "hang":
            time.sleep(600)
        os.abort()
