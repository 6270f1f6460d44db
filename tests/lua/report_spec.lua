-- sprun.report and sprun --report: the page a run's events make, its
-- bad inputs, and the golden files of a virtual-time story (the report
-- and the trace, byte for byte; UPDATE_GOLDEN=1 writes them again).
local helpers = require "helpers"
local sprun = require "sprun"
local cjson = require "cjson"

local q = helpers.shell_quote
local STORY = "tests/golden/story.lua"
local GOLDEN_HTML = helpers.root .. "/tests/golden/story.html"
local GOLDEN_TRACE = helpers.root .. "/tests/golden/story.trace.json"

local count = helpers.count

-- Runs the story under --virtual-time from the repository's top (its path
-- is in the page's title); returns the page and the trace's text.
local function story(dir, extra)
  local html, tr = dir .. "/r.html", dir .. "/t.json"
  local r = helpers.run("cd " .. q(helpers.root) .. " && " .. q(helpers.sprun)
                        .. " --virtual-time --report " .. q(html)
                        .. " --trace " .. q(tr) .. " " .. (extra or "")
                        .. STORY)
  assert.are.equal(0, r.code, r.stderr)
  assert.are.equal("closed\t2\n", r.stdout)
  return helpers.read_file(html), helpers.read_file(tr)
end

describe("sprun --report (golden files)", function()
  it("the story's report and trace under --virtual-time are the golden "
     .. "files, byte for byte, on every run", function()
    local dir = helpers.tmpdir()
    local html, tr = story(dir)
    local html2, tr2 = story(dir)
    helpers.rmrf(dir)
    assert.are.equal(html, html2)
    assert.are.equal(tr, tr2)
    if os.getenv("UPDATE_GOLDEN") == "1" then
      helpers.write_file(GOLDEN_HTML, html)
      helpers.write_file(GOLDEN_TRACE, tr)
    end
    assert.are.equal(helpers.read_file(GOLDEN_HTML), html)
    assert.are.equal(helpers.read_file(GOLDEN_TRACE), tr)
  end)

  it("the golden page shows the story: one breaker with its outage, the "
     .. "retries, two crashes by class and the batch by outcome", function()
    local html = helpers.read_file(GOLDEN_HTML)
    assert.are.equal(1, count(html, 'class="lane breaker"'))
    -- closed, open, half-open, open (a failed probe), half-open, closed.
    local bands = {}
    for state in html:gmatch('class="band ([%w_]+)"') do
      bands[#bands + 1] = state
    end
    assert.are.same({ "closed", "open", "half_open", "open", "half_open",
                      "closed" }, bands)
    assert.are.equal(2, count(html, 'class="mark crash"'))
    assert.truthy(html:find("<td>SIGSEGV</td><td>1</td>", 1, true))
    assert.truthy(html:find("<td>exit status 1</td><td>1</td>", 1, true))
    -- The batch: 6 items, the third failed, the fourth to sixth timed out
    -- (150 ms each at most), as bars.
    local bars = {}
    for outcome, fill in html:gmatch('class="bar batch (%w+)"[^>]-fill="'
                                     .. '(#%x+)"') do
      bars[#bars + 1] = outcome .. " " .. fill
    end
    assert.are.same({ "ok #3a9d5d", "ok #3a9d5d", "failed #d9534f",
                      "failed #f0ad4e", "failed #f0ad4e", "failed #f0ad4e" },
                    bars)
    -- Latency on the virtual clock: every call took the dependency's 20 ms.
    assert.truthy(html:find("<td>20.0 ms</td><td>20.0 ms</td><td>20.0 ms"
                            .. "</td>", 1, true))
  end)
end)

describe("sprun.report", function()
  it("start and stop: a page of what ran in between, under virtual time "
     .. "its bands at the times the breaker changed", function()
    local page
    sprun.run({ clock = "virtual" }, function()
      local cb = sprun.circuit_breaker.start_link {
        name = "db", failure_threshold = 1, reset_timeout_ms = 100,
      }
      local r = sprun.report.start { title = "a <unit> & test" }
      sprun.sleep(50)
      cb:call(function() return nil, sprun.error("unavailable", "no") end)
      sprun.sleep(250)
      page = r:stop()
      assert.are.equal(page, r:stop())
    end)
    assert.truthy(page:find("<title>a &lt;unit&gt; &amp; test</title>", 1,
                            true))
    -- closed for 50 ms, open 100 ms, then half-open to the end (300 ms).
    local bands = {}
    for state, title in page:gmatch('class="band ([%w_]+)".-<title>(.-)</title>')
    do
      bands[#bands + 1] = state .. ": " .. title
    end
    assert.are.same({
      "closed: db: closed from 0.0 ms to 50.0 ms (50.0 ms)",
      "open: db: open from 50.0 ms to 150 ms (100 ms)",
      "half_open: db: half-open from 150 ms to 300 ms (150 ms)",
    }, bands)
    assert.truthy(page:find("300 ms of a virtual clock", 1, true))
  end)

  it("draws at most 40 lanes a section and says how many more there were",
     function()
    local page
    sprun.run({ clock = "virtual" }, function()
      local r = sprun.report.start()
      for i = 1, 45 do
        local cb = sprun.circuit_breaker.start_link {
          name = "b" .. i, failure_threshold = 1, reset_timeout_ms = 100,
        }
        cb:call(function() return nil, "no" end)
      end
      page = r:stop()
    end)
    assert.are.equal(40, count(page, 'class="lane breaker"'))
    assert.truthy(page:find("and 5 more not drawn", 1, true))
  end)

  it("a run with nothing to draw says so", function()
    local page
    sprun.run({ clock = "virtual" }, function()
      local r = sprun.report.start()
      sprun.sleep(10)
      page = r:stop()
    end)
    assert.truthy(page:find("nothing to draw", 1, true))
    assert.truthy(page:find("no call was recorded", 1, true))
  end)

  it("a full ring drops the oldest events and the page says how many",
     function()
    local page
    sprun.run({ clock = "virtual" }, function()
      local r = sprun.report.start { buffer = 3 }
      local cb = sprun.circuit_breaker.start_link { name = "x" }
      for _ = 1, 5 do
        cb:call(function() return 1 end)
      end
      page = r:stop()
    end)
    -- 5 calls, each allowed and a success: 10 events, 3 kept.
    assert.truthy(page:find("3 events recorded, 7 older ones dropped (a ring "
                            .. "of 3)", 1, true), page)
  end)

  it("a path that cannot be written gives nil, err kind report_failed",
     function()
    sprun.run({ clock = "virtual" }, function()
      local r = sprun.report.start { path = "/nonexistent/dir/r.html" }
      local ok, err = r:stop()
      assert.is_nil(ok)
      assert.are.equal("report_failed", err.kind)
      assert.truthy(err.message:find("/nonexistent/dir/r.html", 1, true))
    end)
  end)

  it("bad options raise exact messages at the caller's line", function()
    local cases = {
      { 5, "sprun.report.start: options must be a table or nil, got 5" },
      { { path = "" }, "sprun.report.start: path must be a non-empty string "
                       .. "or nil, got \"\"" },
      { { title = 7 }, "sprun.report.start: title must be a string or nil, "
                       .. "got 7" },
      { { buffr = 1 }, "sprun.report.start: unknown option 'buffr' "
                       .. "(allowed: path, buffer, title)" },
      { { buffer = 0 }, "sprun.report.start: buffer must be an integer "
                        .. "between 1 and 10000000, got 0" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(function() sprun.report.start(c[1]) end)
      assert.is_false(ok)
      assert.are.equal("report_spec.lua", err:match("([%w_]+%.lua):%d+:"),
                       err)
      assert.are.equal(c[2], err:gsub("^.-:%d+: ", ""))
    end
  end)

  it("sprun --report to a file that cannot be written exits 2 before the "
     .. "script runs", function()
    local r = helpers.sprun_run { "--report", "/nonexistent/dir/r.html", "-e",
                                  "print('ran')" }
    assert.are.equal(2, r.code)
    assert.are.equal("", r.stdout)
    assert.truthy(r.stderr:find("^sprun: %-%-report: cannot write "
                                .. "/nonexistent/dir/r.html"), r.stderr)
    r = helpers.sprun_run { "--report" }
    assert.are.equal(2, r.code)
    assert.truthy(r.stderr:find("option '--report' needs a file", 1, true))
  end)

  it("sprun --report alone (no --trace) writes the page, the run's output "
     .. "and status unchanged", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/r.html"
    local r = helpers.sprun_run { "--virtual-time", "--report", path, "-e",
      "local cb = require('sprun').circuit_breaker.start_link{name='cli'} "
      .. "cb:call(function() return 1 end) print('ok') return 3" }
    local page = helpers.read_file(path)
    helpers.rmrf(dir)
    assert.are.equal(3, r.code, r.stderr)
    assert.are.equal("ok\n", r.stdout)
    assert.truthy(page:find('<td>breaker cli</td><td>1</td>', 1, true))
  end)

  it("model.percentile is the nearest rank", function()
    local model = require "sprun.report.model"
    local xs = {}
    for i = 1, 100 do
      xs[i] = i
    end
    assert.are.same({ 50, 95, 99, 100, 1 },
                    { model.percentile(xs, 0.5), model.percentile(xs, 0.95),
                      model.percentile(xs, 0.99), model.percentile(xs, 1),
                      model.percentile(xs, 0) })
    assert.is_nil(model.percentile({}, 0.5))
    assert.are.equal(7, model.percentile({ 7 }, 0.99))
  end)

  it("the trace of the golden story decodes and is well formed", function()
    local doc = cjson.decode(helpers.read_file(GOLDEN_TRACE))
    local slices = helpers.trace_structure(doc)
    assert.is_true(#slices > 0)
  end)
end)
