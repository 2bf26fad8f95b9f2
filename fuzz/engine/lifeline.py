"""A fuzzing process never outlives its campaign: killed when the process that started it dies
(Linux's parent-death signal), and leaving by itself when the campaign's process is gone (the
workers of libFuzzer's -jobs and -fork run under a shell, whose death signals nobody).

Even a campaign killed with SIGKILL takes its workers with it: its libFuzzer child gets the
parent-death signal at once, and each worker sees the campaign gone within WATCH_EVERY_S.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

from fuzz.engine.findings import process_alive

CAMPAIGN_PID_ENV = "RMAPFUZZ_CAMPAIGN_PID"
PR_SET_PDEATHSIG = 1
WATCH_EVERY_S = 0.25


def die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not offered."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)) == 0


def watch_campaign(pid: int, every_s: float = WATCH_EVERY_S) -> threading.Thread:
    """A daemon thread that ends this process as soon as the campaign's process is gone."""
    def watch() -> None:
        while process_alive(pid):
            time.sleep(every_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="rmapfuzz-lifeline", daemon=True)
    thread.start()
    return thread


def hold_on_to_campaign() -> None:
    """Tie this fuzzing process to its campaign (CAMPAIGN_PID_ENV): the parent-death signal, and
    a watch on the campaign's process; leave at once if it is already gone."""
    die_with_parent()
    pid = os.environ.get(CAMPAIGN_PID_ENV)
    if pid is None or not pid.isdigit():
        return
    if not process_alive(int(pid)):
        os._exit(1)
    watch_campaign(int(pid))
