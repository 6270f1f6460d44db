-- Prints the table of a whole `make bench` from the rows the benchmarks
-- appended to the file given as argument (see harness.lua), as Markdown.
package.path = arg[0]:match("^(.*)/[^/]*$") .. "/?.lua;" .. package.path
local path = assert(arg[1], "usage: sprun scripts/bench/summary.lua ROWS")
local f = assert(io.open(path))
print("| bench | case | ns/op | B/op | ratio | target | result |")
print("|---|---|---:|---:|---:|---|---|")
local fmt_ns = require("harness").fmt_ns
local missed = 0
for line in f:lines() do
  local script, name, ns, bytes, ratio, want, verdict =
    line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t"
               .. "([^\t]*)\t([^\t]*)")
  if script then
    print(string.format("| %s | %s | %s | %s | %s | %s | %s |", script, name,
                        fmt_ns(tonumber(ns)), bytes, ratio, want, verdict))
    if verdict:match("^missed") then
      missed = missed + 1
    end
  end
end
f:close()
print(string.format("\n%d targets missed", missed))
