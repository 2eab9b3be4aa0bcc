"""Loaded into the server under test by `bench.capacity` (via PYTHONPATH), never in production.

Records the server's garbage-collector pauses with `gc.callbacks` and writes a JSON summary
to $VZ_BENCH_GC_LOG every 0.25 s (cumulative count and time per generation, and the recent
pauses longer than 2 ms, stamped with CLOCK_MONOTONIC like everything else in the bench).
Experiments (what would the tail latency be if ...), both off unless set:
- $VZ_BENCH_GC_THRESHOLD="a,b,c": gc.set_threshold(a, b, c) at start-up.
- $VZ_BENCH_SEND_HISTORY=N: sets server.rtc.rtphooks.SEND_HISTORY_SIZE (packets kept per consumer
  for NACK) to N as soon as the module is imported; it is read on every send.
The server's code is untouched.
"""

import gc
import json
import os
import threading
import time

_path = os.environ.get("VZ_BENCH_GC_LOG")
_threshold = os.environ.get("VZ_BENCH_GC_THRESHOLD")

_history = os.environ.get("VZ_BENCH_SEND_HISTORY")

if _threshold:
    gc.set_threshold(*(int(x) for x in _threshold.split(",")))

if _history:

    def _patch_history():
        import sys

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # server/rtc/rtphooks.py; flat in server/ in trees from before the layers.
            module = sys.modules.get("server.rtc.rtphooks") or sys.modules.get("server.rtphooks")
            if module is not None and hasattr(module, "SEND_HISTORY_SIZE"):
                module.SEND_HISTORY_SIZE = int(_history)
                return
            time.sleep(0.005)

    threading.Thread(target=_patch_history, name="bench-history-patch", daemon=True).start()

if _path:
    _count = [0, 0, 0]
    _total_ns = [0, 0, 0]
    _recent: list = []
    _start = [0]

    def _on_gc(phase, info):
        now = time.monotonic_ns()
        if phase == "start":
            _start[0] = now
            return
        gen = info.get("generation", 0)
        took = now - _start[0]
        _count[gen] += 1
        _total_ns[gen] += took
        if took > 2_000_000:
            _recent.append((_start[0], gen, took, info.get("collected", 0)))
            if len(_recent) > 200:
                del _recent[:100]

    gc.callbacks.append(_on_gc)

    def _write():
        tmp = _path + ".tmp"
        last = None
        while True:
            time.sleep(0.25)
            state = (tuple(_count), len(_recent))
            if state == last:
                continue
            last = state
            try:
                with open(tmp, "w") as f:
                    json.dump({"pid": os.getpid(), "count": _count, "total_ns": _total_ns,
                               "recent": list(_recent), "threshold": gc.get_threshold()}, f)
                os.replace(tmp, _path)
            except OSError:
                pass

    threading.Thread(target=_write, name="bench-gc-probe", daemon=True).start()
