-- The demo's report in a real browser: headless Chromium renders it (a
-- screenshot and the DOM it built), the DOM holds the lanes, bands and
-- marks the run's telemetry says it produced, the screenshot is a picture
-- (the breaker's colours in it, many colours in all), xmllint accepts the
-- SVG, and the trace of the same run is well formed.
--
-- A machine where Chromium cannot start gives one skipped test saying so
-- (tests/run counts it as skipped), never a pass.
local helpers = require "helpers"
local png = require "png"
local cjson = require "cjson"

local q = helpers.shell_quote
local DEMO = helpers.root .. "/scripts/demo.lua"
local WIDTH, HEIGHT = 1280, 1100

local dir
local run -- what the demo's run left: report, trace, events, dom, png

-- Runs a command without the sanitizer's preload (make check sets it; a
-- browser and sh must not run under it), with a time limit.
local function plain(cmdline)
  return helpers.run("env -u LD_PRELOAD timeout 120 " .. cmdline)
end

local function chromium(args, url)
  return plain("chromium --headless --no-sandbox --disable-gpu "
               .. "--hide-scrollbars --no-first-run --user-data-dir="
               .. q(dir .. "/profile") .. " " .. args .. " " .. q(url))
end

-- Why Chromium cannot run here, or nil when it can: it must render a
-- blank page to a PNG.
local browser_problem
local function check_browser()
  if browser_problem ~= nil then
    return browser_problem or nil
  end
  local r = helpers.run("command -v chromium")
  if r.code ~= 0 then
    browser_problem = "chromium is not installed (make deps installs it)"
    return browser_problem
  end
  local shot = dir .. "/blank.png"
  r = chromium("--window-size=200,100 --screenshot=" .. q(shot),
               "about:blank")
  local img = png.read(shot)
  if img == nil then
    local last = r.stderr:match("([^\n]+)\n*$") or ""
    browser_problem = "chromium cannot start here (exit " .. r.code .. "): "
                      .. last
    return browser_problem
  end
  browser_problem = false
  return nil
end

local function need_browser()
  local why = check_browser()
  if why then
    pending(why)
    return false
  end
  return true
end

-- The demo under a virtual clock with --report, --trace and every event
-- as JSON lines; then Chromium's screenshot and DOM of the report.
local function demo_run()
  if run then
    return run
  end
  local report, tr, ev = dir .. "/r.html", dir .. "/t.json", dir .. "/e.jsonl"
  local r = plain(q(helpers.sprun) .. " --virtual-time --report " .. q(report)
                  .. " --trace " .. q(tr) .. " --telemetry " .. q(ev)
                  .. " --telemetry-level debug " .. q(DEMO))
  assert.are.equal(0, r.code, r.stderr)
  local events = {}
  for line in helpers.read_file(ev):gmatch("[^\n]+") do
    events[#events + 1] = cjson.decode(line)
  end
  run = { report = report, html = helpers.read_file(report),
          trace = cjson.decode(helpers.read_file(tr)), events = events }
  return run
end

local count = helpers.count

-- The events named `name` (all of them, or those pred accepts).
local function events(name, pred)
  local n = 0
  for _, e in ipairs(run.events) do
    if e.event == name and (pred == nil or pred(e)) then
      n = n + 1
    end
  end
  return n
end

describe("the demo's report in headless Chromium", function()
  setup(function()
    dir = helpers.tmpdir()
  end)
  teardown(function()
    helpers.rmrf(dir)
  end)

  it("renders, and the DOM Chromium built holds a lane, band and mark for "
     .. "each breaker, transition, retry, process and crash of the run",
     function()
      if not need_browser() then return end
      demo_run()
      local r = chromium("--dump-dom", "file://" .. run.report)
      assert.are.equal(0, r.code, r.stderr)
      local dom = r.stdout
      assert.truthy(dom:find("<svg", 1, true), dom:sub(1, 300))
      local transitions = 0
      for _, what in ipairs { "opened", "closed", "half_open", "forced_open",
                              "disabled", "isolated" } do
        transitions = transitions
                      + events("snakepit.circuit_breaker." .. what)
      end
      assert.is_true(transitions >= 3, "the demo's outage opens the breaker")
      -- One breaker lane; a band before the first transition and one after
      -- each.
      assert.are.equal(1, count(dom, 'class="lane breaker"'))
      assert.are.equal(transitions + 1, count(dom, 'class="band '))
      assert.are.equal(transitions, count(dom, 'class="mark transition"'))
      assert.is_true(count(dom, 'class="band open"') >= 1)
      -- A tick for each failed attempt the retry events tell.
      local attempts = events("snakepit.retry.attempt")
      assert.is_true(attempts > 0)
      assert.are.equal(attempts, count(dom, 'class="tick retry"'))
      -- A crash mark for each crash recorded and each process a signal
      -- killed.
      local crashes = events("snakepit.worker.crash")
                      + events("sprun.process.exited", function(e)
                          return e.metadata.signal ~= nil
                        end)
      assert.is_true(crashes > 0)
      assert.are.equal(crashes, count(dom, 'class="mark crash"'))
      -- A lane for each child process (the workers and the batch's jobs).
      local procs = events("sprun.process.started")
      assert.is_true(procs > 0)
      assert.are.equal(procs, count(dom, 'class="lane process"'))
      -- A bar for each batch item.
      local items = events("sprun.batch.item")
      assert.are.equal(8, items)
      assert.are.equal(items, count(dom, 'class="bar batch '))
      -- The summary counts the breaker's calls.
      local calls = events("snakepit.circuit_breaker.call.success")
                    + events("snakepit.circuit_breaker.call.failure")
                    + events("snakepit.circuit_breaker.call.rejected")
      assert.truthy(dom:find("<td>breaker worker_pool</td><td>" .. calls
                             .. "</td>", 1, true))
    end)

  it("its screenshot is a picture: many colours, the breaker's closed and "
     .. "open bands among them", function()
      if not need_browser() then return end
      demo_run()
      local shot = dir .. "/report.png"
      local r = chromium(("--window-size=%d,%d --screenshot=%s"):format(
        WIDTH, HEIGHT, q(shot)), "file://" .. run.report)
      local img, err = png.read(shot)
      assert.is_truthy(img, tostring(err) .. "\n" .. r.stderr)
      assert.are.same({ WIDTH, HEIGHT }, { img.width, img.height })
      local n, colours = png.colours(img)
      assert.is_true(n > 64, n .. " colours")
      -- The bands' colours, as the page gives them, over whole areas.
      assert.is_true((colours["#3a9d5d"] or 0) > 2000, "closed band")
      assert.is_true((colours["#d9534f"] or 0) > 500, "open band")
      assert.is_true((colours["#f0ad4e"] or 0) > 200, "half-open band")
    end)

  it("is one self-contained page: its SVG is XML that xmllint accepts, and "
     .. "nothing in it is fetched or run", function()
      demo_run()
      local html = run.html
      local svg = html:match("<svg.-</svg>")
      assert.truthy(svg)
      helpers.write_file(dir .. "/timeline.svg", svg)
      local r = helpers.run("xmllint --noout " .. q(dir .. "/timeline.svg"))
      assert.are.equal(0, r.code, r.stderr)
      assert.falsy(html:find("<script", 1, true))
      assert.falsy(html:find("@import", 1, true))
      assert.falsy(html:find("url(", 1, true))
      local _, links = html:gsub("https?://", "")
      -- The SVG namespace is the one address in the page.
      assert.are.equal(1, links)
      assert.truthy(html:find('xmlns="http://www.w3.org/2000/svg"', 1, true))
    end)

  it("the trace of the same run is well formed: every slice closed, times "
     .. "ordered, ids unique, flows resolved", function()
      demo_run()
      local slices = helpers.trace_structure(run.trace)
      assert.is_true(#slices > 0)
    end)
end)
