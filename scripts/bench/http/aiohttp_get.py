"""The aiohttp peer of scripts/bench/http.lua: GETs of one URL with
aiohttp, from CONCURRENCY tasks sharing one aiohttp.ClientSession (its
TCPConnector limited to CONCURRENCY connections, keep-alive) and one
count, on asyncio's default event loop.

    python3 aiohttp_get.py URL N ROUNDS WARM CONCURRENCY BUDGET_MS

WARM requests first (connections open), then ROUNDS rounds of N, or
fewer (at least one) once the rounds timed so far took BUDGET_MS in all.
Every response is checked (status 200, body b"ok\\n"): a wrong one or an
error does not stop the run, it is counted.  Prints one JSON line: {"case":
"aiohttp", "n", "concurrency", "rounds": [{"wall_ns", "cpu_ns"}],
"wrong", "errors", "first_error", "rss_kb", "version"}; cpu_ns is this
process's user + sys CPU (getrusage).  Proxies from the environment are
ignored (trust_env=False, aiohttp's default): every request goes to URL.
"""

import asyncio
import json
import resource
import sys
import time

import aiohttp


class Counts:
    def __init__(self):
        self.wrong = 0
        self.errors = 0
        self.first_error = None


async def batch(session, url, count, concurrency, c):
    left = count

    async def loop():
        nonlocal left
        while left > 0:
            left -= 1
            try:
                async with session.get(url) as res:
                    body = await res.read()
                    if res.status != 200 or body != b"ok\n":
                        c.wrong += 1
                        if c.wrong <= 3:
                            print("aiohttp: WRONG RESPONSE: %d %r"
                                  % (res.status, body), file=sys.stderr)
            except Exception as e:  # counted, not fatal
                c.errors += 1
                c.first_error = c.first_error or repr(e)

    await asyncio.gather(*(loop() for _ in range(concurrency)))


def cpu_ns():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return int((r.ru_utime + r.ru_stime) * 1e9)


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main(url, n, rounds, warm, concurrency, budget_ms):
    c = Counts()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await batch(session, url, warm, concurrency, c)
        out, spent = [], 0
        for r in range(rounds):
            if r > 0 and spent >= budget_ms * 1e6:
                break
            c0, t0 = cpu_ns(), time.perf_counter_ns()
            await batch(session, url, n, concurrency, c)
            t1, c1 = time.perf_counter_ns(), cpu_ns()
            out.append({"wall_ns": t1 - t0, "cpu_ns": c1 - c0})
            spent += t1 - t0
    print(json.dumps({
        "case": "aiohttp", "n": n, "concurrency": concurrency, "rounds": out,
        "wrong": c.wrong, "errors": c.errors, "first_error": c.first_error,
        "rss_kb": rss_kb(),
        "version": "aiohttp %s, Python %s" % (
            aiohttp.__version__, sys.version.split()[0]),
    }), flush=True)


if __name__ == "__main__":
    url, n, rounds, warm, concurrency, budget_ms = sys.argv[1:7]
    asyncio.run(main(url, int(n), int(rounds), int(warm), int(concurrency),
                     int(budget_ms)))
