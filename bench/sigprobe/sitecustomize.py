"""Loaded into the servers under test by `bench.signalling` (via PYTHONPATH), never in production.

The server's code is untouched. Two optional probes:

$VZ_SIG_GC_LOG=<file>
    Garbage-collector pauses (gc.callbacks): per generation the number of collections,
    their total and longest duration, written as JSON to <file> every 0.5 s by a daemon
    thread. The bench reads it before and after a window. Cost: one callback per
    collection.

$VZ_SIG_TRACEMALLOC=<dir>
    tracemalloc traces every allocation from start-up (one frame each), and on SIGUSR1
    the process writes a snapshot to the path named in <dir>/tracemalloc.next, then
    creates <dir>/tracemalloc.done. Tracing slows the server and adds its own memory, so
    only the attribution (which lines allocate how much per connection) is meaningful,
    not the RSS of such a run.
"""

import os

_gc_log = os.environ.get("VZ_SIG_GC_LOG")
_trace_dir = os.environ.get("VZ_SIG_TRACEMALLOC")

if _gc_log:
    import gc
    import json
    import threading
    import time

    _count = [0, 0, 0]
    _total_ns = [0, 0, 0]
    _max_ns = [0, 0, 0]
    _started = [0]

    def _on_gc(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter_ns()
            return
        gen = info.get("generation", 0)
        took = time.perf_counter_ns() - _started[0]
        _count[gen] += 1
        _total_ns[gen] += took
        if took > _max_ns[gen]:
            _max_ns[gen] = took

    gc.callbacks.append(_on_gc)

    def _writer():
        tmp = _gc_log + ".tmp"
        while True:
            time.sleep(0.5)
            data = {"t": time.monotonic(), "count": list(_count), "total_ms": [ns / 1e6 for ns in _total_ns],
                    "max_ms": [ns / 1e6 for ns in _max_ns], "objects": None}
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, _gc_log)

    threading.Thread(target=_writer, name="bench-gc-log", daemon=True).start()

if _trace_dir:
    import gc
    import signal
    import tracemalloc

    tracemalloc.start(1)

    def _dump(signum, frame):  # noqa: ARG001
        with open(os.path.join(_trace_dir, "tracemalloc.next")) as f:
            path = f.read().strip()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(path)
        open(os.path.join(_trace_dir, "tracemalloc.done"), "w").close()

    signal.signal(signal.SIGUSR1, _dump)
