"""The peers of scripts/bench/pool.lua: the same echo workload on Python's
own process pools, measured in this process.

    python3 peers.py N WORKERS [CASE ...]

CASE is one of mp_map (multiprocessing.Pool(WORKERS).map(echo, items,
chunksize=1)), ppe_submit (concurrent.futures.ProcessPoolExecutor(WORKERS),
one submit per item, then every result) and ppe_map (its map with
chunksize=1); all three by default.  Items are {"i": i}, as in the sprun
bench.  Each case starts its pool and waits until every worker has answered
once before the clock starts, so worker start-up is not counted.

Prints one JSON object per line and case: {"case", "n", "workers",
"seconds", "req_s", "cpu_us" (this parent process's user+sys CPU per
request; the workers' is not in it), "rss_kb" (this process's resident
memory after the case)}.  The pools are shut down (workers joined) before
the next case, and the script exits with them.
"""

import concurrent.futures
import json
import multiprocessing
import os
import resource
import sys
import time


def echo(args):
    return args


def _warm(pool_map, workers):
    # Every worker up and answering before the clock starts.
    list(pool_map(echo, [{"i": -1}] * (workers * 4)))


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(name, n, workers, run):
    items = [{"i": i} for i in range(n)]
    cpu0, t0 = _cpu(), time.perf_counter()
    out = run(items)
    dt, cpu = time.perf_counter() - t0, _cpu() - cpu0
    assert len(out) == n and out[-1] == items[-1], name
    print(json.dumps({"case": name, "n": n, "workers": workers,
                      "seconds": round(dt, 4), "req_s": round(n / dt, 1),
                      "cpu_us": round(cpu * 1e6 / n, 2),
                      "rss_kb": _rss_kb()}), flush=True)


def mp_map(n, workers):
    with multiprocessing.Pool(workers) as pool:
        _warm(lambda f, xs: pool.map(f, xs, chunksize=1), workers)
        _measure("mp_map", n, workers,
                 lambda items: pool.map(echo, items, chunksize=1))
        pool.close()
        pool.join()


def ppe_submit(n, workers):
    with concurrent.futures.ProcessPoolExecutor(workers) as ex:
        _warm(lambda f, xs: ex.map(f, xs), workers)

        def run(items):
            futures = [ex.submit(echo, x) for x in items]
            return [f.result() for f in futures]

        _measure("ppe_submit", n, workers, run)


def ppe_map(n, workers):
    with concurrent.futures.ProcessPoolExecutor(workers) as ex:
        _warm(lambda f, xs: ex.map(f, xs), workers)
        _measure("ppe_map", n, workers,
                 lambda items: list(ex.map(echo, items, chunksize=1)))


CASES = {"mp_map": mp_map, "ppe_submit": ppe_submit, "ppe_map": ppe_map}


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 50000
    workers = int(argv[2]) if len(argv) > 2 else 4
    for name in argv[3:] or list(CASES):
        CASES[name](n, workers)


if __name__ == "__main__":
    main(sys.argv)
