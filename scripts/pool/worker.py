"""A Python worker for sprun.pool, written with the helper that ships with
sprun (python/sprun_worker.py; the pool puts it on PYTHONPATH). A pool
runs it; run by hand it says that it needs one.

    local pool = sprun.pool.start { name = "py", size = 4,
                                    cmd = { "python3", "scripts/pool/worker.py" } }
    print(pool:call("add", { 2, 3 }))  --> 5

Each handler takes the request's args (any JSON value) and returns the
reply's value; a WorkerError becomes the caller's error with its kind,
message and details, any other exception an error of kind "exception".
print() is safe: the protocol has its own channel (fd 3), and what a
worker prints reaches sprun's stderr as "[py/worker_1] ...".
"""

import os
import signal
import time

import sprun_worker


@sprun_worker.handler("add")
def add(args):
    return args[0] + args[1]


held = []


@sprun_worker.handler("lookup")
def lookup(args):
    table = {"a": 1, "b": 2}
    if args not in table:
        raise sprun_worker.WorkerError("not_found", f"no key {args!r}",
                                       {"key": args})
    return table[args]


@sprun_worker.handler("crash_once")
def crash_once(args):
    """Segfaults the first time for a marker file, answers after."""
    marker = args["marker"]
    if os.path.exists(marker):
        return "survived on " + sprun_worker.worker_id
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGSEGV)


@sprun_worker.handler("segfault")
def segfault(args):
    os.kill(os.getpid(), signal.SIGSEGV)


@sprun_worker.handler("sleep")
def sleep(ms):
    time.sleep(ms / 1000)
    return ms


@sprun_worker.handler("leak")
def leak(mb):
    """Keeps `mb` MiB for good, as a leaking library would."""
    held.append(bytearray(mb * 1024 * 1024))
    return len(held)


@sprun_worker.handler("work")
def work(args):
    """The demo's request: usually an answer; now and then a segfault, a
    hang, or a leak, as args["fault"] says."""
    fault = args.get("fault")
    if fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "hang":
        time.sleep(3600)
    elif fault == "leak":
        held.append(bytearray(40 * 1024 * 1024))
    return args["n"] * args["n"]


if __name__ == "__main__":
    sprun_worker.run()
