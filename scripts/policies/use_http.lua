-- Calls two fake services through the pipelines of
-- scripts/policies/http.lua: a catalog that is down (served from the
-- fallback) and a payment service that answers.
local sprun = require "sprun"

local ok, reg = pcall(sprun.policy.default)
if not ok then
  io.stderr:write("run with: sprun --policy scripts/policies/http.lua "
                  .. "scripts/policies/use_http.lua\n")
  return 2
end

local catalog = reg:pipeline("catalog")
local page = catalog:execute(function()
  sprun.sleep(1000) -- hangs: every attempt times out after 300 ms
  return { items = { "a", "b" } }
end)
print(("catalog: %d items, stale=%s"):format(#page.items,
                                            tostring(page.stale)))

local payments = reg:pipeline("payments")
local receipt = payments:execute(function(amount)
  sprun.sleep(10)
  return { ok = true, amount = amount }
end, 42)
print(("payment: ok=%s amount=%d"):format(tostring(receipt.ok),
                                         receipt.amount))
print("pipelines: " .. table.concat(reg:names().pipelines, ", "))
return 0
