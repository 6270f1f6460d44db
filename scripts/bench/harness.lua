-- Benchmark harness for scripts/bench/*.lua (run by `make bench`).
--
-- A case is a function run(n) that performs the operation n times in a
-- loop of its own, so that the JIT compiles the loop as it would in real
-- code. Each case is warmed up, then timed 5 times; the median is reported
-- in ns per operation, with the bytes allocated per operation (from
-- collectgarbage("count") with the collector stopped) and the ratio to the
-- bare operation measured in the same run.
--
-- A case may carry a target, checked against the median:
--   { over = ns }    at most `ns` above the bare operation
--   { ns = ns }      at most `ns` per operation
--   { bytes = b }    at most `b` bytes allocated per operation
--   { ratio = r }    at most `r` times the bare operation (or a floor)
-- Every row is also appended to the file named by SPRUN_BENCH_ROWS, from
-- which scripts/bench/summary.lua prints the table of a whole `make bench`.
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

local function fmt_ns(ns)
  if ns >= 1e6 then
    return string.format("%.1f ms", ns / 1e6)
  elseif ns >= 1e4 then
    return string.format("%.1f us", ns / 1e3)
  end
  return string.format("%.1f ns", ns)
end
_M.fmt_ns = fmt_ns

-- "met" or "missed by ..." for a row against its target.
local function verdict(row)
  local t = row.target
  if t == nil then
    return "", ""
  end
  local want, missed = {}, {}
  if t.over then
    want[#want + 1] = "<= +" .. fmt_ns(t.over)
    local over = row.ns - (row.bare or 0)
    if over > t.over then
      missed[#missed + 1] = "+" .. fmt_ns(over - t.over)
    end
  end
  if t.ns then
    want[#want + 1] = "<= " .. fmt_ns(t.ns)
    if row.ns > t.ns then
      missed[#missed + 1] = "+" .. fmt_ns(row.ns - t.ns)
    end
  end
  if t.ratio then
    want[#want + 1] = string.format("<= %.2fx", t.ratio)
    if row.ratio_value > t.ratio then
      missed[#missed + 1] = string.format("%.2fx", row.ratio_value / t.ratio)
    end
  end
  if t.bytes then
    want[#want + 1] = string.format("<= %d B", t.bytes)
    if row.bytes > t.bytes + 0.5 then
      missed[#missed + 1] = string.format("+%.0f B", row.bytes - t.bytes)
    end
  end
  local v = #missed == 0 and "met" or "missed by " .. table.concat(missed, ", ")
  return table.concat(want, ", "), v
end

local rows_file = os.getenv("SPRUN_BENCH_ROWS")
local script = (arg and arg[0] or "?"):match("([^/]*)%.lua$") or "?"

-- Records a row and prints its line. Fields: name, ns, bytes, bare (ns of
-- the bare operation, or nil), floor (what the ratio is taken to when it is
-- not the bare operation), note, target.
function _M.record(row)
  local base = row.floor or row.bare
  row.ratio_value = base and base > 0 and row.ns / base or nil
  row.ratio = row.ratio_value and string.format("%.2fx", row.ratio_value)
              or "-"
  row.over = row.bare and string.format("%+.1f ns", row.ns - row.bare) or "-"
  row.want, row.verdict = verdict(row)
  _M.rows[#_M.rows + 1] = row
  local line = string.format("%-52s %10s/op %9.1f B/op  ratio %-8s over %s",
                             row.name, fmt_ns(row.ns), row.bytes or 0,
                             row.ratio, row.over)
  if row.note then
    line = line .. "  (" .. row.note .. ")"
  end
  if row.target then
    line = line .. "  [target " .. row.want .. ": " .. row.verdict .. "]"
  end
  print(line)
  io.stdout:flush()
  if rows_file then
    local f = assert(io.open(rows_file, "a"))
    f:write(table.concat({ script, row.name, string.format("%.3f", row.ns),
                           string.format("%.1f", row.bytes or 0), row.ratio,
                           row.want, row.verdict, row.note or "" }, "\t"),
            "\n")
    f:close()
  end
  return row.ns
end

-- Measures a case and prints its line. `bare` is the ns/op of the bare
-- operation it wraps (or nil for a bare case).
function _M.case(name, n, run, bare, target)
  local ns, b = _M.measure(run, n)
  return _M.record { name = name, ns = ns, bytes = b, bare = bare,
                     target = target }
end

return _M
