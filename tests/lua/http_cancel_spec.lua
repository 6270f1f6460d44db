-- 1,000 HTTP requests, half of them cancelled at random points (while the
-- name is looked up, while connecting, waiting for headers, or in the
-- middle of a body), against nginx and the fault server: every request
-- gets exactly one outcome, and once the run is over no handle, no curl
-- transfer and no file descriptor is left.
local h = require "helpers"
local sprun = require "sprun"
local nginx = require "httpd.nginx"
local fault = require "httpd.fault_server"

local http = sprun.http
local kind = sprun.error_kind

local open_fds = h.open_fds

describe("sprun.http under cancellation", function()
  it("1,000 requests, half cancelled at random points: one outcome each, "
    .. "and nothing left", function()
    -- libcurl and its TLS library open what they keep for the process at
    -- their first use: counted before.
    h.run_tasks(function() http.get("http://127.0.0.1:1/") end)
    local before = open_fds()
    local r = h.run_tasks(function()
      local srv = nginx.start { large_bytes = 4 * 1024 * 1024 }
      local fs = fault.start()
      -- localhost goes through sprun.dns (no cache): the cancels at 0 ms
      -- land during the lookup.
      local dns_url = (srv:url("/small"):gsub("127%.0%.0%.1", "localhost"))
      local fast = { dns_url, srv:url("/small"), fs:url("/ok") }
      -- Requests that last longer than the cancels come: while
      -- connecting, waiting for headers, or in the middle of a body.
      local slow = {
        srv:url("/limited/large.bin"),
        fs:url("/drip?bytes=50&ms=20"),
        fs:url("/slow-headers?ms=2000"),
        fs:url("/never"),
      }
      local rng = 12345
      local function random(n)
        rng = (rng * 1103515245 + 12345) % 2147483648
        return rng % n
      end
      local outcomes, counts = {}, { done = 0, cancelled = 0, other = 0 }
      local N, AT_ONCE = 1000, 50
      local i = 0
      while i < N do
        local tasks, cancel_at = {}, {}
        for k = 1, AT_ONCE do
          i = i + 1
          local url
          if i % 10 == 0 then
            url, cancel_at[k] = dns_url, 0
          elseif i % 2 == 0 then
            url, cancel_at[k] = slow[random(#slow) + 1], 1 + random(30)
          else
            url = random(2) == 0 and fast[random(#fast) + 1]
                  or slow[random(#slow) + 1]
          end
          local n = i
          -- A request to be cancelled cannot time out first.
          local limit = cancel_at[k] and 10000 or 300
          tasks[k] = sprun.spawn(function()
            local v, err = http.get(url, { timeout_ms = limit,
                                           dns_cache_ms = 0 })
            outcomes[n] = (outcomes[n] or 0) + 1
            return v, err
          end)
        end
        -- Each task runs up to its first wait (the lookup, the transfer);
        -- then the cancels come, the earliest first.
        sprun.sleep(0)
        local t0 = sprun.now()
        local order = {}
        for k = 1, AT_ONCE do
          if cancel_at[k] then
            order[#order + 1] = k
          end
        end
        table.sort(order, function(a, b) return cancel_at[a] < cancel_at[b] end)
        for _, k in ipairs(order) do
          local wait = cancel_at[k] - (sprun.now() - t0)
          if wait > 0 then
            sprun.sleep(wait)
          end
          tasks[k]:cancel()
        end
        for k = 1, AT_ONCE do
          local v, err = tasks[k]:await()
          if v then
            counts.done = counts.done + 1
          elseif kind(err) == "cancelled" then
            counts.cancelled = counts.cancelled + 1
          else
            counts.other = counts.other + 1
          end
        end
      end
      local stats = http.pool_stats()
      fs:close()
      srv:stop()
      local twice = 0
      for n = 1, N do
        if (outcomes[n] or 0) > 1 then
          twice = twice + 1
        end
      end
      return { counts = counts, stats = stats, twice = twice }
    end)
    -- Every task ended one way or the other, none twice.
    local c = r.counts
    assert.are.equal(1000, c.done + c.cancelled + c.other)
    assert.are.equal(0, r.twice)
    -- The 500 cancels each landed before their request ended; the others
    -- got a response or an error (timeouts, for the slow ones).
    assert.are.equal(500, c.cancelled)
    assert.are.equal(500, c.done + c.other)
    assert.is_true(c.done > 0, c.done)
    assert.are.same({ running = 0, live = 0 },
                    { running = r.stats.running, live = r.stats.live })
    -- The pool's connections went with the loop.
    local after, names = open_fds()
    assert.are.equal(before, after, names)
  end)
end)
