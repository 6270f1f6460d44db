-- sprun.policy: policy files, their error messages, hot reload and
-- `sprun --policy`.
local sprun = require "sprun"
local sched = require "sprun.sched"
local policy = require "sprun.policy"
local h = require "helpers"

local dir

local function write(text, name)
  return h.write_file(dir .. "/" .. (name or "policies.lua"), text)
end

local function lines(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local GOOD = [[
local threshold = 2
return {
  breakers = { db = { failure_threshold = threshold, reset_timeout_ms = 60000 } },
  retry_policies = { fast = { max_attempts = 3, backoff_ms = { 0 } } },
  health_monitors = { workers = { max_crashes = 3 } },
  bulkheads = { pool = { max_concurrent = 2, max_queue = 4 } },
  pipelines = {
    python_pool = { breaker = "db", retry = "fast", bulkhead = "pool",
                    timeout_ms = 100 },
    inline = { breaker = { failure_threshold = 1 },
               retry = { max_attempts = 2, backoff_ms = { 0 },
                         budget = { ratio = 0.5 } },
               fallback = function(err) return "fb" end },
  },
}
]]

describe("sprun.policy", function()
  before_each(function() dir = h.tmpdir() end)
  after_each(function() h.rmrf(dir) end)

  it("loads a file into a registry of named objects", function()
    local reg = assert(policy.load(write(GOOD)))
    assert.are.same({
      breakers = { "db" }, bulkheads = { "pool" },
      health_monitors = { "workers" }, pipelines = { "inline", "python_pool" },
      retry_policies = { "fast" }, pools = {}, rate_limiters = {},
    }, reg:names())
    local p = reg:pipeline("python_pool")
    assert.are.equal(reg:breaker("db"), p:breaker())
    assert.are.equal(reg:bulkhead("pool"), p:bulkhead())
    assert.are.equal(reg:retry_policy("fast"), p:retry_policy())
    assert.are.equal(3, reg:health_monitor("workers"):stats().max_crashes)
    assert.are.equal("workers", reg:health_monitor("workers"):stats().pool)
    assert.are.equal(42, p:execute(function() return 42 end))
    assert.are.equal("fb", reg:pipeline("inline"):execute(function()
      return nil, "unavailable"
    end))
    local none, err = reg:pipeline("nope")
    assert.is_nil(none)
    assert.are.equal("not_found", err.kind)
    assert.are.equal(policy, sprun.policy)
  end)

  it("raises on a path that is not a string", function()
    assert.has_error(function() policy.load(5) end,
                     "policy.load: path must be a non-empty string, got 5")
  end)

  -- Each: the file's text, and the message after "<path>: ".
  local BAD = {
    { "return {", "" }, -- syntax error: checked apart
    { "return 5", "the file must return a table, got 5" },
    { "return nil", "the file must return a table, got nil" },
    { "return { pipeline = {} }",
      "unknown key 'pipeline' (did you mean 'pipelines'?)" },
    { "return { zzz = {} }", "unknown key 'zzz' (valid keys: breakers, "
      .. "bulkheads, health_monitors, pipelines, pools, rate_limiters, "
      .. "retry_policies)" },
    { "return { breakers = 5 }",
      "breakers must be a table of named entries, got 5" },
    { "return { breakers = { db = 5 } }",
      "breakers.db must be a table of options, got 5" },
    { "return { breakers = { { failure_threshold = 1 } } }",
      "breakers[1] is not a valid name (names are non-empty strings)" },
    { "return { breakers = { db = { failure_threshold = 0 } } }",
      "breakers.db.failure_threshold must be an integer >= 1, got 0" },
    { "return { breakers = { db = { failure_treshold = 3 } } }",
      "breakers.db: unknown key 'failure_treshold' (did you mean "
      .. "'failure_threshold'?)" },
    { "return { breakers = { db = { reset_timeout_ms = -1 } } }",
      "breakers.db.reset_timeout_ms must be an integer >= 0, got -1" },
    { "return { breakers = { db = { is_failure = true } } }",
      "breakers.db.is_failure must be a function, got true" },
    { "return { retry_policies = { fast = { max_attempts = 0 } } }",
      "retry_policies.fast.max_attempts must be an integer >= 1, got 0" },
    { "return { retry_policies = { fast = { backoff_ms = { 1, -2 } } } }",
      "retry_policies.fast.backoff_ms[2] must be a number >= 0, got -2" },
    { "return { retry_policies = { fast = { jitter = 'some' } } }",
      "retry_policies.fast.jitter must be false, true, \"full\", \"equal\" "
      .. "or \"decorrelated\", got \"some\"" },
    { "return { retry_policies = { fast = { jitter_factor = 2 } } }",
      "retry_policies.fast.jitter_factor must be a number between 0 and 1, "
      .. "got 2" },
    { "return { health_monitors = { w = { max_crashes = 0 } } }",
      "health_monitors.w.max_crashes must be an integer >= 1, got 0" },
    { "return { health_monitors = { w = { crash_windw_ms = 1 } } }",
      "health_monitors.w: unknown key 'crash_windw_ms' (did you mean "
      .. "'crash_window_ms'?)" },
    { "return { bulkheads = { b = { max_concurrent = 0 } } }",
      "bulkheads.b.max_concurrent must be an integer >= 1, got 0" },
    { "return { bulkheads = { b = { max_queue = -1 } } }",
      "bulkheads.b.max_queue must be an integer >= 0, got -1" },
    { "return { pipelines = { p = 1 } }",
      "pipelines.p must be a table of options, got 1" },
    { "return { pipelines = { p = { retry = { max_attempts = 0 } } } }",
      "pipelines.p.retry.max_attempts must be an integer >= 1, got 0" },
    { "return { pipelines = { p = { retry = { max_atempts = 2 } } } }",
      "pipelines.p.retry: unknown key 'max_atempts' (did you mean "
      .. "'max_attempts'?)" },
    { "return { pipelines = { p = { retry = 'fast' } } }",
      "pipelines.p.retry names no retry policy \"fast\" (retry_policies: "
      .. "none defined)" },
    { "return { retry_policies = { fast = {} }, "
      .. "pipelines = { p = { retry = 'fats' } } }",
      "pipelines.p.retry names no retry policy \"fats\" (did you mean "
      .. "\"fast\"?)" },
    { "return { pipelines = { p = { retry = 3 } } }",
      "pipelines.p.retry must be a retry policy name or a table of options, "
      .. "got 3" },
    { "return { pipelines = { p = { retry = { budget = { ratio = -1 } } } } }",
      "pipelines.p.retry.budget.ratio must be a number >= 0, got -1" },
    { "return { pipelines = { p = { retry = { budget = { ratoi = 1 } } } } }",
      "pipelines.p.retry.budget: unknown key 'ratoi' (did you mean "
      .. "'ratio'?)" },
    { "return { retry_policies = { fast = {} }, pipelines = { p = { retry = "
      .. "{ policy = 'fast', max_attempts = 2 } } } }",
      "pipelines.p.retry.max_attempts cannot be given with 'policy'" },
    { "return { pipelines = { p = { breaker = 'db' } } }",
      "pipelines.p.breaker names no breaker \"db\" (breakers: none defined)" },
    { "return { pipelines = { p = { breaker = { failure_threshold = 0 } } } }",
      "pipelines.p.breaker.failure_threshold must be an integer >= 1, got 0" },
    { "return { pipelines = { p = { breaker = 7 } } }",
      "pipelines.p.breaker must be a breaker name or a table of options, "
      .. "got 7" },
    { "return { pipelines = { p = { bulkhead = 'pool' } } }",
      "pipelines.p.bulkhead names no bulkhead \"pool\" (bulkheads: none "
      .. "defined)" },
    { "return { pipelines = { p = { bulkhead = { max_concurrent = 0 } } } }",
      "pipelines.p.bulkhead.max_concurrent must be an integer >= 1, got 0" },
    { "return { pipelines = { p = { timeout_ms = -5 } } }",
      "pipelines.p.timeout_ms must be a number >= 0, got -5" },
    { "return { pipelines = { p = { timeout = 5 } } }",
      "pipelines.p: unknown key 'timeout' (did you mean 'timeout_ms'?)" },
    { "return { pipelines = { p = { fallback = 'x' } } }",
      "pipelines.p.fallback must be a function, got \"x\"" },
    { "return { pipelines = { p = { name = '' } } }",
      "pipelines.p.name must be a non-empty string, got \"\"" },
  }

  it("has at least 30 bad files", function()
    assert.is_true(#BAD >= 30)
  end)

  for i, case in ipairs(BAD) do
    if i > 1 then
      it("rejects bad file " .. i .. ": " .. case[2], function()
        local path = write(case[1])
        local reg, err = policy.load(path)
        assert.is_nil(reg)
        assert.are.equal("policy_error", err.kind)
        assert.are.equal(path .. ": " .. case[2], err.message)
      end)
    end
  end

  it("reports every error in a file, in the order it is checked", function()
    local path = write([[
return {
  breakers = { db = { failure_threshold = 0 }, api = { reset_timeot_ms = 1 } },
  retry_policies = { fast = { max_attempts = 0 } },
  health_monitors = { w = 3 },
  pipelines = { p = { breaker = "db", retry = "fast", timeout_ms = -1 },
                q = { breaker = "nope" } },
}
]])
    local reg, err = policy.load(path)
    assert.is_nil(reg)
    assert.are.equal("policy_error", err.kind)
    -- A pipeline naming a broken entry gets no second error for the name.
    assert.are.same({
      path .. ": breakers.api: unknown key 'reset_timeot_ms' (did you mean "
        .. "'reset_timeout_ms'?)",
      path .. ": breakers.db.failure_threshold must be an integer >= 1, got 0",
      path .. ": retry_policies.fast.max_attempts must be an integer >= 1, "
        .. "got 0",
      path .. ": health_monitors.w must be a table of options, got 3",
      path .. ": pipelines.p.timeout_ms must be a number >= 0, got -1",
      path .. ": pipelines.q.breaker names no breaker \"nope\" (breakers: "
        .. "api, db)",
    }, lines(err.message))
  end)

  it("reports the first 20 errors of a file and how many more", function()
    local entries = {}
    for i = 1, 25 do
      entries[i] = ("b%02d = { failure_threshold = 0 }"):format(i)
    end
    local path = write("return { breakers = { " .. table.concat(entries, ", ")
                       .. " } }")
    local _, err = policy.load(path)
    local got = lines(err.message)
    assert.are.equal(21, #got)
    assert.are.equal(path .. ": breakers.b01.failure_threshold must be an "
                     .. "integer >= 1, got 0", got[1])
    assert.are.equal(path .. ": breakers.b20.failure_threshold must be an "
                     .. "integer >= 1, got 0", got[20])
    assert.are.equal(path .. ": and 5 more errors", got[21])
  end)

  it("gives file:line for a syntax error and a runtime error", function()
    local path = write("return {\n  breakers = {\n")
    local _, err = policy.load(path)
    assert.are.equal(path .. ":3: unexpected symbol near '<eof>'",
                     err.message)
    path = write("local x = nil\nreturn { n = x.y }\n")
    _, err = policy.load(path)
    assert.are.equal(path .. ":2: attempt to index local 'x' (a nil value)",
                     err.message)
    path = write("error('no config for ' .. 'prod')\n")
    _, err = policy.load(path)
    assert.are.equal(path .. ":1: no config for prod", err.message)
    _, err = policy.load(dir .. "/missing.lua")
    assert.truthy(err.message:find("cannot open " .. dir .. "/missing.lua",
                                   1, true))
  end)

  describe("reload", function()
    local function file(threshold, extra)
      return write(([[
return {
  breakers = { db = { failure_threshold = %d, reset_timeout_ms = 60000 } },
  pipelines = { p = { breaker = "db" }, gone = {} %s },
}]]):format(threshold, extra or ""))
    end

    it("keeps an open breaker open", function()
      local reg = assert(policy.load(file(1)))
      local cb = reg:breaker("db")
      reg:pipeline("p"):execute(function() return nil, "down" end)
      assert.are.equal("open", cb:state())
      file(5)
      assert.is_true(reg:reload())
      assert.are.equal(cb, reg:breaker("db"))
      assert.are.equal("open", reg:breaker("db"):state())
      assert.are.equal(5, cb:stats().failure_threshold)
    end)

    it("applies a new threshold to the live breaker", function()
      local reg = assert(policy.load(file(5)))
      local p = reg:pipeline("p")
      local down = function() return nil, "down" end
      p:execute(down)
      file(2)
      assert.is_true(reg:reload())
      assert.are.equal(p, reg:pipeline("p"))
      assert.are.equal("closed", reg:breaker("db"):state())
      p:execute(down)
      assert.are.equal("open", reg:breaker("db"):state())
    end)

    it("rejects a broken file whole and changes nothing", function()
      local reg = assert(policy.load(file(3)))
      local before = reg:names()
      local cb = reg:breaker("db")
      local path = write([[
return {
  breakers = { db = { failure_threshold = 1 }, other = {} },
  pipelines = { p = { breaker = "db", retry = { max_attempts = 0 } } },
}]])
      local ok, err = reg:reload()
      assert.is_nil(ok)
      assert.are.equal(path .. ": pipelines.p.retry.max_attempts must be an "
                       .. "integer >= 1, got 0", err.message)
      assert.are.same(before, reg:names())
      assert.are.equal(cb, reg:breaker("db"))
      assert.are.equal(3, cb:stats().failure_threshold)
      write("return {")
      assert.is_nil((reg:reload()))
      assert.are.equal(3, cb:stats().failure_threshold)
    end)

    it("closes removed names and adds new ones", function()
      local reg = assert(policy.load(file(3)))
      local gone = reg:pipeline("gone")
      write([[return { breakers = { db = {} }, pipelines = { fresh = {} } }]])
      assert.is_true(reg:reload())
      assert.are.same({ "fresh" }, reg:names().pipelines)
      assert.is_nil((reg:pipeline("gone")))
      local v, err = gone:execute(function() return 1 end)
      assert.is_nil(v)
      assert.are.equal("closed", err.kind)
      assert.are.equal(1, reg:pipeline("fresh"):execute(function()
        return 1 end))
    end)

    it("keeps a pipeline's own breaker and bulkhead state", function()
      write([[return { pipelines = { p = {
        breaker = { failure_threshold = 1, reset_timeout_ms = 60000 },
        bulkhead = { max_concurrent = 1 } } } }]])
      local reg = assert(policy.load(dir .. "/policies.lua"))
      local p = reg:pipeline("p")
      local cb, bh = p:breaker(), p:bulkhead()
      p:execute(function() return nil, "down" end)
      write([[return { pipelines = { p = {
        breaker = { failure_threshold = 4, reset_timeout_ms = 60000 },
        bulkhead = { max_concurrent = 3 } } } }]])
      assert.is_true(reg:reload())
      assert.are.equal(cb, p:breaker())
      assert.are.equal(bh, p:bulkhead())
      assert.are.equal("open", cb:state())
      assert.are.equal(4, cb:stats().failure_threshold)
      assert.are.equal(3, bh:stats().max_concurrent)
    end)
  end)

  describe("sprun --policy", function()
    it("loads the file before the script as policy.default()", function()
      local pol = write(GOOD)
      local script = write([[
local sprun = require "sprun"
local reg = sprun.policy.default()
print(reg:pipeline("python_pool"):execute(function() return "ran" end))
]], "script.lua")
      local r = h.sprun_run({ "--policy", pol, script })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("ran\n", r.stdout)
      r = h.sprun_run({ "--policy=" .. pol, "-e",
                        "print(#require('sprun').policy.default():names()"
                        .. ".pipelines)" })
      assert.are.equal("2\n", r.stdout)
      -- Without --policy there is no default: asking for it is misuse.
      local ok, err = pcall(policy.default)
      assert.is_false(ok)
      assert.are.equal("policy.default: no policy file loaded: run with "
        .. "--policy FILE or call sprun.policy.load", err)
      r = h.sprun_run({ "-e", "require('sprun').policy.default()" })
      assert.are.equal(1, r.code)
      assert.matches("^sprun: %(command line%):1: policy.default: no policy "
                     .. "file loaded", r.stderr)
    end)

    it("exits 2 naming the error of a broken file", function()
      local pol = write("return { breakers = { db = { failure_threshold = 0 } } }")
      local r = h.sprun_run({ "--policy", pol, "-e", "print('never')" })
      assert.are.equal(2, r.code)
      assert.are.equal("", r.stdout)
      assert.are.equal("sprun: --policy: " .. pol .. ": breakers.db."
                       .. "failure_threshold must be an integer >= 1, got 0\n",
                       r.stderr)
      r = h.sprun_run({ "--policy" })
      assert.are.equal(2, r.code)
    end)

    it("reloads on SIGHUP", function()
      local pol = write([[return { breakers = { db = { failure_threshold = 7 } } }]])
      local script = write(([[
local sprun = require "sprun"
local reg = sprun.policy.default()
local f = io.open(%q, "w")
f:write("return { breakers = { db = { failure_threshold = 9 } } }")
f:close()
local ffi = require "ffi"
ffi.cdef "int kill(int pid, int sig); int getpid(void);"
ffi.C.kill(ffi.C.getpid(), 1)
local deadline = sprun.now() + 10000
while reg:breaker("db"):stats().failure_threshold ~= 9
      and sprun.now() < deadline do
  sprun.sleep(10)
end
print(reg:breaker("db"):stats().failure_threshold)
]]):format(pol), "script.lua")
      local r = h.sprun_run({ "--policy", pol, script })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("9\n", r.stdout)
      assert.truthy(r.stderr:find("reloaded", 1, true))
    end)
  end)

  it("leaves no handle open after a run", function()
    local reg = assert(policy.load(write(GOOD)))
    sprun.run(function()
      reg:pipeline("python_pool"):execute(function() return 1 end)
    end)
    assert.are.equal(0, sched.last_run.handles)
  end)

  describe("the examples in scripts/policies", function()
    it("runs use_workers.lua with workers.lua", function()
      local r = h.sprun_run({ "--policy", h.root .. "/scripts/policies/workers.lua",
                              h.root .. "/scripts/policies/use_workers.lua" })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("jobs done: 20/20\nattempts: 26\nbreaker: closed\n"
                       .. "pool healthy: true\n", r.stdout)
    end)

    it("runs use_http.lua with http.lua", function()
      local r = h.sprun_run({ "--virtual-time", "--policy",
                              h.root .. "/scripts/policies/http.lua",
                              h.root .. "/scripts/policies/use_http.lua" })
      assert.are.equal(0, r.code, r.stderr)
      assert.are.equal("catalog: 0 items, stale=true\n"
                       .. "payment: ok=true amount=42\n"
                       .. "pipelines: catalog, payments\n", r.stdout)
    end)

    it("says how to run them without --policy", function()
      local r = h.sprun_run({ h.root .. "/scripts/policies/use_http.lua" })
      assert.are.equal(2, r.code)
      assert.truthy(r.stderr:find("run with: sprun --policy", 1, true))
    end)
  end)

  it("names rate limiters that pipelines share; a reload sets the new rate "
     .. "on the same limiter, keeping what it took", function()
    local function file(rate)
      return write(([[return {
        rate_limiters = { api = { rate = %d, per_ms = 1000 } },
        pipelines = { a = { rate_limit = "api" }, b = { rate_limit = "api" } },
      }]]):format(rate))
    end
    local reg = assert(policy.load(file(3)))
    local lim = reg:rate_limiter("api")
    local got = h.vrun(function()
      local out = {}
      for i = 1, 4 do
        local p = reg:pipeline(i % 2 == 1 and "a" or "b")
        local v, err = p:execute(function() return i end)
        out[i] = v or sprun.error_kind(err)
      end
      return out
    end)
    assert.are.same({ 1, 2, 3, "rate_limited" }, got)
    file(6)
    assert(reg:reload())
    assert.are.equal(lim, reg:rate_limiter("api"))
    local s = lim:stats()
    assert.are.same({ 6, 6, 3 }, { s.rate, s.burst, s.taken })
    assert.are.same({ "api" }, reg:names().rate_limiters)
    write([[return { pipelines = { a = { rate_limit = "apl" } },
                     rate_limiters = { api = { rate = 1 } } }]])
    local ok, err = reg:reload()
    assert.is_nil(ok)
    assert.matches('pipelines.a.rate_limit names no rate limiter "apl" '
                   .. '(did you mean "api"?)', err, 1, true)
    write([[return { rate_limiters = { api = { rate = -1 } } }]])
    ok, err = reg:reload()
    assert.is_nil(ok)
    assert.matches("rate_limiters.api.rate must be a number", err, 1, true)
  end)
end)
