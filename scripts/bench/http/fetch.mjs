// The Node peer of scripts/bench/http.lua: GETs of one URL with Node's
// own fetch (undici, its default agent: keep-alive, as many connections
// as requests in flight), from CONCURRENCY loops of
// `await fetch(url)` + `await res.text()` sharing one count.
//
//   node fetch.mjs URL N ROUNDS WARM CONCURRENCY BUDGET_MS
//
// WARM requests first (connections open, code compiled), then ROUNDS
// rounds of N, or fewer (at least one) once the rounds timed so far took
// BUDGET_MS in all. Every response is checked (status 200, body "ok\n"):
// a wrong one or an error does not stop the run, it is counted. Prints
// one JSON line: { "case": "node_fetch", "n", "concurrency", "rounds": [{
// "wall_ns", "cpu_ns" }], "wrong", "errors", "first_error", "rss_kb",
// "version" }; cpu_ns is this process's user + sys CPU (every thread),
// from process.cpuUsage().

const [url, n, rounds, warm, concurrency, budget] = process.argv.slice(2);
const N = Number(n), ROUNDS = Number(rounds), WARM = Number(warm);
const CONCURRENCY = Number(concurrency);
const BUDGET_NS = Number(budget) * 1e6;

let wrong = 0, errors = 0, firstError = null;

async function batch(count) {
  let left = count;
  async function loop() {
    while (left > 0) {
      left--;
      try {
        const res = await fetch(url);
        const body = await res.text();
        if (res.status !== 200 || body !== "ok\n") {
          wrong++;
          if (wrong <= 3) {
            process.stderr.write(`node fetch: WRONG RESPONSE: ${res.status} `
              + `${JSON.stringify(body)}\n`);
          }
        }
      } catch (e) {
        errors++;
        firstError = firstError || String(e.cause || e);
      }
    }
  }
  const loops = [];
  for (let k = 0; k < CONCURRENCY; k++) loops.push(loop());
  await Promise.all(loops);
}

function cpuNs() {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
}

await batch(WARM);
const out = [];
let spent = 0;
for (let r = 0; r < ROUNDS && (r === 0 || spent < BUDGET_NS); r++) {
  const c0 = cpuNs(), t0 = process.hrtime.bigint();
  await batch(N);
  const t1 = process.hrtime.bigint(), c1 = cpuNs();
  out.push({ wall_ns: Number(t1 - t0), cpu_ns: c1 - c0 });
  spent += Number(t1 - t0);
}
console.log(JSON.stringify({
  case: "node_fetch", n: N, concurrency: CONCURRENCY, rounds: out, wrong,
  errors, first_error: firstError,
  rss_kb: Math.round(process.memoryUsage().rss / 1024),
  version: process.version,
}));
