-- Benchmark harness for scripts/bench/*.lua (run by `make bench`).
--
-- A case is a function run(n) that performs the operation n times in a
-- loop of its own, so that the JIT compiles the loop as it would in real
-- code. Each case is warmed up, then timed 5 times; the median is reported
-- in ns per operation, with the bytes allocated per operation (from
-- collectgarbage("count") with the collector stopped) and the ratio to the
-- bare operation measured in the same run.
local sprun = require "sprun"

local _M = { rows = {} }

local RUNS = 5

local function median(t)
  table.sort(t)
  return t[(#t + 1) / 2]
end

-- Returns ns/op and bytes/op of run(n).
function _M.measure(run, n)
  run(math.max(1, math.floor(n / 10))) -- warm-up: compile the traces
  local times, bytes = {}, {}
  for i = 1, RUNS do
    collectgarbage("collect")
    collectgarbage("stop")
    local kb0 = collectgarbage("count")
    local t0 = sprun.hrtime()
    run(n)
    local t1 = sprun.hrtime()
    local kb1 = collectgarbage("count")
    collectgarbage("restart")
    times[i] = (t1 - t0) / n
    bytes[i] = (kb1 - kb0) * 1024 / n
  end
  return median(times), median(bytes)
end

-- Measures a case and prints its line. `bare` is the ns/op of the bare
-- operation it wraps (or nil for a bare case).
function _M.case(name, n, run, bare)
  local ns, b = _M.measure(run, n)
  local ratio = bare and bare > 0 and string.format("%.2fx", ns / bare) or "-"
  local over = bare and string.format("%+.1f ns", ns - bare) or "-"
  local row = { name = name, ns = ns, bytes = b, ratio = ratio, over = over }
  _M.rows[#_M.rows + 1] = row
  print(string.format("%-52s %10.1f ns/op %8.1f B/op  ratio %-8s over %s",
                      name, ns, b, ratio, over))
  io.stdout:flush()
  return ns
end

return _M
