-- A run report's HTML: one self-contained page (inline SVG and CSS, no
-- script, no font or image from anywhere) of a report model (model.lua)
-- (internal).
--
--   html.render(model, info) -> string
--
-- info: { title, clock = "real" | "virtual", recorded, dropped, buffer }.
-- The timeline is one SVG: a time axis, then a section per kind of lane
-- (breakers, retries, workers, crashes, batches, HTTP). Every mark has a
-- <title>, the browser's own tooltip. Elements carry classes the tests
-- count (class="band open", "mark crash", ...). Numbers are printed with
-- fixed precision and lanes drawn in the model's order, so the same model
-- gives the same bytes.

local format = string.format
local gsub = string.gsub
local concat = table.concat
local floor = math.floor
local tostring = tostring

local model = require "sprun.report.model"

local _M = {}

local WIDTH = 1200
local LABEL = 230    -- the lane labels' column
local RIGHT = 24
local LANE = 26      -- a lane's height
local HEAD = 24      -- a section heading's height
local AXIS = 34      -- the time axis at the top

local COLOUR = {
  closed = "#3a9d5d", open = "#d9534f", half_open = "#f0ad4e",
  disabled = "#9e9e9e",
}
local OUTCOME = { ok = "#3a9d5d", timeout = "#f0ad4e", cancelled = "#9e9e9e" }
local ERROR_COLOUR = "#d9534f"
local STATE_NAME = { closed = "closed", open = "open",
                     half_open = "half-open", disabled = "disabled" }

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
              ['"'] = "&quot;", ["'"] = "&#39;" }

-- s as XML text or attribute value; what is not printable UTF-8 text
-- (a control byte) is dropped.
local function esc(s)
  s = gsub(tostring(s), "[%z\1-\8\11\12\14-\31]", "")
  return (gsub(s, "[&<>\"']", ESC))
end
_M.escape = esc

local function ms_text(ms)
  if ms == nil then
    return "-"
  end
  if ms >= 10000 then
    return format("%.1f s", ms / 1000)
  elseif ms >= 100 then
    return format("%d ms", floor(ms + 0.5))
  end
  return format("%.1f ms", ms)
end
_M.ms_text = ms_text

-- A step of 1, 2 or 5 times a power of ten giving at most 10 ticks.
local function tick_step(span)
  local step = 1
  while span / step > 10 do
    if span / (step * 2) <= 10 then
      return step * 2
    elseif span / (step * 5) <= 10 then
      return step * 5
    end
    step = step * 10
  end
  return step
end

-- Where a crash mark's label goes: the first of two lines of a lane it
-- does not overlap a label on, or nowhere (its tooltip still says it).
-- ends: the x where each line's last label ends.
local function label_line(ends, x, text)
  local w = #text * 5.6 + 8
  for line = 1, 2 do
    if x >= (ends[line] or -1 / 0) then
      ends[line] = x + w
      return line
    end
  end
  return nil
end

local function crash_mark(add, ends, x, y, class, title)
  local line = label_line(ends, x, class)
  local text = ""
  if line then
    -- Right of the mark, or left of it where it would leave the picture.
    local left = x + #class * 5.6 + 8 > WIDTH
    text = format('<text x="%.1f" y="%d"%s>%s</text>', left and x - 5
                  or x + 5, y + (line == 1 and 11 or 22),
                  left and ' text-anchor="end"' or "", esc(class))
  end
  add('<g class="mark crash"><path d="M%.1f %dl6 6m0 -6l-6 6"/>%s<title>%s'
      .. '</title></g>', x - 3, y + 3, text, title)
end

local function svg_timeline(m, out)
  local t0 = m.t0
  local span = m.t1 - t0
  if span <= 0 then
    span = 1
  end
  local pw = WIDTH - LABEL - RIGHT
  local function x(t)
    local v = LABEL + (t - t0) / span * pw
    if v < LABEL then
      v = LABEL
    elseif v > LABEL + pw then
      v = LABEL + pw
    end
    return v
  end
  local body, y = {}, AXIS
  local function add(s, ...)
    body[#body + 1] = format(s, ...)
  end
  local function heading(text, n)
    if n == 0 then
      return false
    end
    add('<text class="section" x="8" y="%d">%s</text>', y + 17, esc(text))
    y = y + HEAD
    return true
  end
  local function lane(kind, label, h)
    add('<g class="lane %s"><rect class="lane-bg" x="%d" y="%d" width="%d" '
        .. 'height="%d"/><text class="label" x="8" y="%d">%s</text>',
        kind, LABEL, y, pw, h - 2, y + h / 2 + 4, esc(label))
  end
  -- A section: its heading, then draw(item) for each of its lanes (each
  -- opens its lane with lane(); returns its height, default LANE), and
  -- what was not drawn.
  local function lanes(title, list, key, draw)
    if not heading(title, #list) then
      return
    end
    for i = 1, #list do
      local h = draw(list[i]) or LANE
      add("</g>")
      y = y + h
    end
    local n = m.hidden[key]
    if n then
      add('<text class="hidden" x="8" y="%d">and %d more not drawn</text>',
          y + 14, n)
      y = y + 20
    end
  end

  -- Breakers: a band per state, a mark per transition.
  lanes("Circuit breakers", m.breakers, "breakers", function(b)
    lane("breaker", b.name, LANE)
    for j = 1, #b.bands do
      local band = b.bands[j]
      local x1, x2 = x(band.from), x(band.to)
      add('<rect class="band %s" x="%.1f" y="%d" width="%.1f" height="%d" '
          .. 'fill="%s"><title>%s: %s from %s to %s (%s)</title></rect>',
          band.state, x1, y + 4, x2 - x1 > 0 and x2 - x1 or 0.5,
          LANE - 10, COLOUR[band.state] or "#cccccc", esc(b.name),
          STATE_NAME[band.state] or band.state, ms_text(band.from - t0),
          ms_text(band.to - t0), ms_text(band.to - band.from))
    end
    for j = 1, #b.marks do
      local mk = b.marks[j]
      local extra = mk.failures and format(" after %d failures",
                                           mk.failures) or ""
      add('<line class="mark transition" x1="%.1f" x2="%.1f" y1="%d" '
          .. 'y2="%d"><title>%s %s at %s%s</title></line>', x(mk.t),
          x(mk.t), y + 1, y + LANE - 3, esc(b.name), esc(mk.what),
          ms_text(mk.t - t0), extra)
    end
  end)

  -- Retries: a tick per failed attempt, its backoff as a line after it.
  lanes("Retries", m.retries, "retries", function(r)
    lane("retry", "retry " .. r.name, LANE)
    for j = 1, #r.ticks do
      local tk = r.ticks[j]
      local tx = x(tk.t)
      if tk.delay and tk.delay > 0 then
        add('<line class="backoff" x1="%.1f" x2="%.1f" y1="%d" y2="%d"/>',
            tx, x(tk.t + tk.delay), y + LANE / 2, y + LANE / 2)
      end
      add('<path class="tick retry" d="M%.1f %dl-4 -8h8z"><title>attempt '
          .. '%s failed at %s: %s%s; retry in %s</title></path>', tx,
          y + LANE / 2, tostring(tk.attempt or "?"), ms_text(tk.t - t0),
          esc(tk.kind or "error"),
          tk.message and ": " .. esc(tk.message) or "", ms_text(tk.delay))
    end
    for j = 1, #r.ends do
      local e = r.ends[j]
      if e.what ~= "success" then
        add('<text class="mark exhausted" x="%.1f" y="%d">&#215;<title>'
            .. 'retry %s at %s after %s attempts</title></text>', x(e.t) - 4,
            y + LANE - 6, e.what == "exhausted" and "exhausted"
            or "budget exhausted", ms_text(e.t - t0),
            tostring(e.attempts or "?"))
      end
    end
  end)

  -- Workers and processes: lifetime bars, request ticks, crash marks.
  lanes("Workers and processes", m.workers, "workers", function(w)
    lane(w.kind, w.label, LANE)
    for j = 1, #w.lives do
      local life = w.lives[j]
      local x1, x2 = x(life.from), x(life.to)
      local ended = life.alive and "still running at the end"
                    or life.signal and "killed by " .. life.signal
                    or life.code and "exited " .. life.code
                    or life.reason or "ended"
      add('<rect class="life %s" x="%.1f" y="%d" width="%.1f" height="%d">'
          .. '<title>%s: from %s to %s (%s), %s</title></rect>', w.kind, x1,
          y + 7, x2 - x1 > 1 and x2 - x1 or 1, LANE - 16, esc(w.label),
          ms_text(life.from - t0), ms_text(life.to - t0),
          ms_text(life.to - life.from), esc(ended))
    end
    for j = 1, #w.taints do
      local tn = w.taints[j]
      add('<rect class="taint" x="%.1f" y="%d" width="%.1f" height="%d">'
          .. '<title>tainted at %s for %s: %s</title></rect>', x(tn.from),
          y + 3, x(tn.to) - x(tn.from), LANE - 8, ms_text(tn.from - t0),
          ms_text(tn.to - tn.from), esc(tn.reason or ""))
    end
    for j = 1, #w.requests do
      local rq = w.requests[j]
      add('<line class="tick request %s" x1="%.1f" x2="%.1f" y1="%d" '
          .. 'y2="%d"><title>request at %s: %s, %s</title></line>',
          rq.outcome == "ok" and "ok" or "failed", x(rq.t), x(rq.t), y + 5,
          y + LANE - 7, ms_text(rq.t - t0), esc(rq.outcome or "?"),
          ms_text(rq.ms))
    end
    local ends = {}
    for j = 1, #w.marks do
      local mk = w.marks[j]
      crash_mark(add, ends, x(mk.t), y, mk.class, format(
        "crashed at %s: %s", ms_text(mk.t - t0), esc(mk.class)))
    end
  end)

  -- Crashes recorded in a health monitor for no worker drawn above.
  lanes("Crashes recorded", m.crashes, "crashes", function(c)
    lane("crashes", "health " .. c.name, LANE)
    local ends = {}
    for j = 1, #c.marks do
      local mk = c.marks[j]
      crash_mark(add, ends, x(mk.t), y, mk.class, format(
        "%s crashed at %s: %s", esc(mk.worker), ms_text(mk.t - t0),
        esc(mk.class)))
    end
  end)

  -- Batches: a bar per item, a row each, coloured by outcome.
  lanes("Batches", m.batches, "batches", function(b)
    local rows = b.size > 0 and b.size or #b.items
    if rows > 20 then
      rows = 20
    end
    local h = rows * 7 + 8
    lane("batch", format("batch %d (%d items)", b.id, b.size), h)
    for j = 1, #b.items do
      local it = b.items[j]
      local x1, x2 = x(it.from), x(it.to)
      add('<rect class="bar batch %s" x="%.1f" y="%d" width="%.1f" '
          .. 'height="5" fill="%s"><title>item %d: %s, %s (from %s)</title>'
          .. '</rect>', it.outcome == "ok" and "ok" or "failed", x1,
          y + 4 + ((it.index - 1) % rows) * 7, x2 - x1 > 1 and x2 - x1 or 1,
          OUTCOME[it.outcome] or ERROR_COLOUR, it.index, esc(it.outcome),
          ms_text(it.to - it.from), ms_text(it.from - t0))
    end
    return h
  end)

  -- HTTP: a bar per request, coloured by status class.
  lanes("HTTP", m.http, "http", function(o)
    lane("http", o.name, LANE)
    for j = 1, #o.requests do
      local rq = o.requests[j]
      local ms = rq.ms or 0
      local x1, x2 = x(rq.t - ms), x(rq.t)
      local s = rq.status or 0
      local colour = rq.outcome ~= "ok" and ERROR_COLOUR
                     or s >= 500 and ERROR_COLOUR
                     or s >= 400 and "#f0ad4e" or "#3a9d5d"
      add('<rect class="bar request" x="%.1f" y="%d" width="%.1f" '
          .. 'height="%d" fill="%s" fill-opacity="0.6"><title>%s %s: %s%s, '
          .. '%s</title></rect>', x1, y + 6, x2 - x1 > 1 and x2 - x1 or 1,
          LANE - 14, colour, esc(rq.method or ""), esc(rq.url or ""),
          esc(rq.outcome), rq.status and " " .. rq.status or "",
          ms_text(rq.ms))
    end
  end)

  if #body == 0 then
    add('<text class="empty" x="%d" y="%d">nothing to draw: no breaker, '
        .. 'retry, worker, batch or HTTP event was recorded</text>', LABEL,
        y + 20)
    y = y + 30
  end

  -- The time axis, over the whole height.
  local head = {}
  local step = tick_step(span)
  local t = 0
  while t <= span do
    head[#head + 1] = format('<line class="grid" x1="%.1f" x2="%.1f" y1="%d" '
                             .. 'y2="%d"/><text class="axis" x="%.1f" '
                             .. 'y="%d">%s</text>', x(t0 + t), x(t0 + t),
                             AXIS - 6, y, x(t0 + t), AXIS - 12,
                             t >= 1000 and format("%g s", t / 1000)
                             or format("%g ms", t))
    t = t + step
  end
  out[#out + 1] = format('<svg xmlns="http://www.w3.org/2000/svg" '
                         .. 'class="timeline" width="%d" height="%d" '
                         .. 'viewBox="0 0 %d %d" font-family="sans-serif" '
                         .. 'font-size="12">', WIDTH, y + 8, WIDTH, y + 8)
  out[#out + 1] = '<rect x="0" y="0" width="100%" height="100%" '
                  .. 'fill="#ffffff"/>'
  out[#out + 1] = concat(head, "\n")
  out[#out + 1] = concat(body, "\n")
  out[#out + 1] = "</svg>"
end

local CSS = [[
body { font-family: sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
p.info { color: #555; margin: 0 0 16px; }
table { border-collapse: collapse; margin-bottom: 8px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px;
            margin-right: 4px; vertical-align: -1px; }
svg .lane-bg { fill: #f7f7f7; }
svg .label { fill: #222; }
svg .section { font-weight: bold; fill: #222; }
svg .axis { fill: #666; text-anchor: middle; font-size: 11px; }
svg .grid { stroke: #e2e2e2; }
svg .transition { stroke: #222; stroke-width: 1.5; }
svg .life.worker { fill: #5b8def; }
svg .life.process { fill: #8ea4bd; }
svg .taint { fill: #f5a623; fill-opacity: 0.55; }
svg .request.ok { stroke: #1d3f8a; }
svg .request.failed { stroke: #d9534f; stroke-width: 2; }
svg .crash path { stroke: #b00020; stroke-width: 2.5; }
svg .crash text { fill: #b00020; font-size: 10px; }
svg .retry { fill: #6f42c1; }
svg .backoff { stroke: #6f42c1; stroke-dasharray: 2 2; }
svg .exhausted { fill: #b00020; font-size: 16px; }
svg .hidden, svg .empty { fill: #777; font-style: italic; }
]]

local function cell(v)
  return "<td>" .. esc(v) .. "</td>"
end

local function summary(m, out)
  local function add(s)
    out[#out + 1] = s
  end
  add('<h2>Calls</h2><table class="calls"><tr><th>source</th><th>calls</th>'
      .. '<th>failures</th><th>rejected</th><th>p50</th><th>p95</th>'
      .. '<th>p99</th></tr>')
  for i = 1, #m.calls do
    local r = m.calls[i]
    local d = r.durations
    add("<tr>" .. cell(r.kind .. " " .. r.name) .. cell(r.calls)
        .. cell(r.failures) .. cell(r.rejections)
        .. cell(ms_text(model.percentile(d, 0.5)))
        .. cell(ms_text(model.percentile(d, 0.95)))
        .. cell(ms_text(model.percentile(d, 0.99))) .. "</tr>")
  end
  if #m.calls == 0 then
    add('<tr><td colspan="7">no call was recorded</td></tr>')
  end
  add("</table>")
  if #m.breakers > 0 then
    add('<h2>Circuit breakers</h2><table class="breakers"><tr><th>breaker'
        .. '</th><th>closed</th><th>open</th><th>half-open</th><th>opened'
        .. '</th><th>open to closed (mean)</th><th>open to closed (max)</th>'
        .. '</tr>')
    for i = 1, #m.breakers do
      local b = m.breakers[i]
      local bt = model.breaker_times(b)
      local sum, max = 0, nil
      for j = 1, #bt.recoveries do
        local r = bt.recoveries[j]
        sum = sum + r
        if max == nil or r > max then
          max = r
        end
      end
      local n = #bt.recoveries
      add("<tr>" .. cell(b.name) .. cell(ms_text(bt.closed))
          .. cell(ms_text(bt.open)) .. cell(ms_text(bt.half_open))
          .. cell(bt.opened) .. cell(n > 0 and ms_text(sum / n) or "-")
          .. cell(n > 0 and ms_text(max) or "-") .. "</tr>")
    end
    add("</table>")
  end
  add('<h2>Crashes</h2><table class="crashes"><tr><th>class</th>'
      .. '<th>crashes</th></tr>')
  local total = 0
  for i = 1, #m.crash_classes do
    local c = m.crash_classes[i]
    total = total + c.n
    add("<tr>" .. cell(c.class) .. cell(c.n) .. "</tr>")
  end
  add("<tr>" .. cell("all") .. cell(total) .. "</tr>")
  add("<tr>" .. cell("worker restarts") .. cell(m.restarts) .. "</tr>")
  add("</table>")
end

function _M.render(m, info)
  local out = {}
  out[1] = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
  out[2] = "<title>" .. esc(info.title) .. "</title><style>" .. CSS
           .. "</style></head><body>"
  out[3] = "<h1>" .. esc(info.title) .. "</h1>"
  out[4] = format('<p class="info">%s of %s clock; %d events recorded%s.'
                  .. "</p>", ms_text(m.t1 - m.t0), esc(info.clock),
                  info.recorded, info.dropped > 0 and format(
                    ", %d older ones dropped (a ring of %d)", info.dropped,
                    info.buffer) or "")
  out[5] = '<p class="legend">'
  local legend = { { COLOUR.closed, "closed" }, { COLOUR.open, "open" },
                   { COLOUR.half_open, "half-open" },
                   { "#5b8def", "worker alive" }, { "#8ea4bd", "process" },
                   { "#f5a623", "tainted" }, { "#b00020", "crash" },
                   { "#6f42c1", "retry" } }
  for i = 1, #legend do
    out[#out + 1] = format('<span><i style="background:%s"></i>%s</span>',
                           legend[i][1], legend[i][2])
  end
  out[#out + 1] = "</p>"
  svg_timeline(m, out)
  summary(m, out)
  out[#out + 1] = "</body></html>\n"
  return concat(out, "\n")
end

return _M
