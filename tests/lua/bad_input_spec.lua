-- The bad-input table: every kind of wrong input sprun is given, across
-- the sprun executable (CLI), the constructors and methods of each module,
-- the scheduler, processes, sockets, the executor and policy files. The
-- cases are in bad_input/, one file per area, and share the objects and
-- scratch files of bad_input/fixtures.lua; this spec runs them.
--
-- Each case is data: an id, the input, and the exact outcome: for the CLI
-- the exit status and the exact stderr (its first line when a traceback
-- follows); for the library the exact error raised (with no position: the
-- API function is called straight from pcall, so an error raised at the
-- caller's level carries none, and one raised from inside sprun would name
-- a sprun file) or the exact `nil, err` returned. No case may crash, hang
-- (the CLI runs under `timeout`, the loop under a watchdog) or leak (no
-- handle left open, no child process left).
--
-- Cases marked `also` are also in the spec named there; the others are
-- this table's own (at least 60, checked below).
local sched = require "sprun.sched"
local h = require "helpers"
local fx = require "bad_input.fixtures"

local pack = h.pack

--- The table ----------------------------------------------------------------
-- CLI cases: argv (with $DIR for a scratch directory holding the files of
-- fx.FILES), code, and stderr (exact) or stderr1 (the exact first line, a
-- traceback follows). Library cases: call() returns the function and its
-- arguments; raises = the exact message, or returns = the values (an error
-- object as its tostring). task = true runs it inside a loop.

-- The files of bad_input/, in the order their cases run.
local cases = {}
for _, area in ipairs { "policy_files", "cli", "objects", "scheduler",
                        "executor", "io", "http", "fleet",
                        "adaptive_limit", "rate_limiter" } do
  for _, case in ipairs(require("bad_input." .. area)) do
    cases[#cases + 1] = case
  end
end

--- Running the table ----------------------------------------------------------

local function subst(s, dir)
  return (s:gsub("%$DIR", function() return dir end))
end

-- h.run_tasks with a watchdog: a case still running after 5 s is
-- cancelled and fails.
local function run_guarded(fn)
  return h.run_guarded(fn, 5000)
end

-- pcall(fn, args...) from call(ctx), then the closers the case left in
-- ctx. Returns the packed results.
local function attempt(case)
  local ctx = {}
  local f = pack(case.call(ctx))
  local r = pack(pcall(f[1], unpack(f, 2, f.n)))
  for i = #ctx, 1, -1 do ctx[i]() end
  return r
end

local function shown(r)
  local out = { n = r.n - 1 }
  for i = 2, r.n do
    local v = r[i]
    out[i - 1] = type(v) == "table" and tostring(v) or v
  end
  return out
end

describe("bad input", function()
  local dir

  setup(function()
    dir = h.tmpdir()
    fx.dir = dir
    for name, body in pairs(fx.FILES) do
      h.write_file(dir .. "/" .. name, body)
    end
  end)

  teardown(function()
    h.rmrf(dir)
  end)

  after_each(function()
    assert.is_nil(sched.running())
    assert.are.same({}, h.live_children())
  end)

  it("the table has at least 60 cases of its own, unique ids, and cases "
    .. "in every area", function()
    local AREAS = {
      cli = "cli", breaker = "objects", monitor = "objects",
      policy = "objects", errors = "objects", policyfile = "policy files", sleep = "scheduler",
      spawn = "scheduler", run = "scheduler", task = "scheduler",
      execute = "executor", process = "I/O", tcp = "I/O", dns = "I/O",
      http = "I/O", fleet = "fleet", adaptive = "adaptive limit",
      rate = "rate limiter",
    }
    local ids, own, by_area = {}, 0, {}
    for _, case in ipairs(cases) do
      assert.is_nil(ids[case.id], case.id)
      ids[case.id] = true
      if case.also == nil then own = own + 1 end
      local area = AREAS[case.id:match("^(%a+)")]
      assert.is_not_nil(area, case.id)
      by_area[area] = (by_area[area] or 0) + 1
    end
    assert.is_true(own >= 60, own .. " cases of its own")
    assert.are.same({ cli = 39, objects = 44, scheduler = 23, executor = 34,
                      ["I/O"] = 77, ["policy files"] = 10, fleet = 22,
                      ["adaptive limit"] = 34, ["rate limiter"] = 54 },
                    by_area)
  end)

  for _, case in ipairs(cases) do
    it(case.id, function()
      if case.argv then
        local words = { "timeout 10", h.shell_quote(h.sprun) }
        for _, a in ipairs(case.argv) do
          words[#words + 1] = h.shell_quote(subst(a, dir))
        end
        local r = h.run(table.concat(words, " "))
        if case.stderr then
          assert.are.same({ code = case.code,
                            stderr = subst(case.stderr, dir) },
                          { code = r.code, stderr = r.stderr })
        else
          assert.are.same({ code = case.code,
                            stderr1 = subst(case.stderr1, dir) },
                          { code = r.code,
                            stderr1 = r.stderr:match("^[^\n]*") })
          if case.code == 1 then
            assert.matches("\nstack traceback:\n", r.stderr, 1, true)
          end
        end
        return
      end
      local r
      if case.task then
        r = run_guarded(function() return attempt(case) end)
      else
        r = attempt(case)
      end
      if case.raises then
        assert.are.same({ false, case.raises }, { r[1], r[2] })
      else
        assert.is_true(r[1], tostring(r[2]))
        local want = { n = #case.returns }
        for i = 1, table.maxn(case.returns) do
          local v = case.returns[i]
          want[i] = type(v) == "string" and subst(v, dir) or v
        end
        want.n = math.max(want.n, table.maxn(case.returns))
        assert.are.same(want, shown(r))
      end
    end)
  end
end)
