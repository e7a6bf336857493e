"""Claim-recovery suite (locustfile): the throughput users, while one worker process at a time is
SIGKILLed every `LT_KILL_EVERY` seconds and restarted `LT_RESTART_AFTER` seconds later. Each kill is
logged (pid, time) to kills.jsonl; the runner measures recovery and checks for lost or doubled work.
Run it with `python -m load_tests.run recovery`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import gevent
from locust import events

from load_tests import common
from load_tests.common import WorkflowUser, log_line

__all__ = ["WorkflowUser"]

KILL_EVERY_S = float(os.environ.get("LT_KILL_EVERY", "5"))
RESTART_AFTER_S = float(os.environ.get("LT_RESTART_AFTER", "1"))
FIRST_KILL_S = float(os.environ.get("LT_FIRST_KILL", "3"))
# No kill this close to the end of the run: the last one must have time to be recovered under load.
RUN_SECONDS = float(os.environ.get("LT_SECONDS", "20"))

_killer: Any = None


def kill_loop() -> None:
    began = time.monotonic()
    gevent.sleep(FIRST_KILL_S)
    n = 0
    while time.monotonic() - began + KILL_EVERY_S / 2 < RUN_SECONDS:
        pool = common.POOL
        assert pool is not None
        slot = n % len(pool.slots)
        proc = pool.slots[slot]
        assert proc is not None
        pid = proc.pid
        proc.kill()  # SIGKILL
        log_line("kills.jsonl", {"slot": slot, "pid": pid, "t": time.time()})
        gevent.sleep(RESTART_AFTER_S)
        new = pool.start(slot)
        log_line("kills.jsonl", {"slot": slot, "restarted_pid": new.pid, "t": time.time()})
        n += 1
        gevent.sleep(max(0.0, KILL_EVERY_S - RESTART_AFTER_S))


@events.test_start.add_listener
def _start_killer(environment: Any, **_: Any) -> None:
    global _killer
    _killer = gevent.spawn(kill_loop)


@events.test_stop.add_listener
def _stop_killer(environment: Any, **_: Any) -> None:
    if _killer is not None:
        _killer.kill()
