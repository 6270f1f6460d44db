-- The sprun executable's main chain: what runtime/main.c calls, once,
-- after it has parsed the command line and loaded the script.
--
--   cli.main(opts, chunk, ...) -> exit status[, message]
--
-- opts (from main.c): clock ("real" | "virtual"); policy (--policy PATH);
-- telemetry (--telemetry=DEST: "stderr", "stdout" or a path); log_events
-- (--log-events); metrics_host and metrics_port (--metrics=HOST:PORT);
-- telemetry_level (--telemetry-level: what both sinks write);
-- shutdown_grace_ms (--shutdown-grace-ms); trace (--trace FILE) and
-- trace_buffer (--trace-buffer N): a sprun.trace of the whole run, written
-- to FILE at its end; report (--report FILE): the sprun.report page of the
-- same recording, written to FILE at its end.
--
-- In this order: the policy file is loaded (a broken one exits 2 before
-- the script runs), the telemetry sinks are attached (a JSON-lines path
-- that cannot be opened exits 2), then the script runs as the main task
-- (sched.main, which answers SIGINT, SIGTERM and SIGHUP: with --policy,
-- SIGHUP reloads the file instead), inside which the metrics endpoint
-- starts before the script's first line.
--
-- The trap: a sink or an endpoint the chain made must outlive nothing:
-- the endpoint belongs to the main task (cancelling it closes the port),
-- and a failure to listen ends the run with status 2, reported on one
-- line, before the script ran.

local sched = require "sprun.sched"
local telemetry = require "sprun.telemetry"
local errors = require "sprun.errors"

local find = string.find
local format = string.format
local io_stderr = io.stderr
local io_stdout = io.stdout
local io_open = io.open

local _M = {}

-- chunk, run once the metrics endpoint listens (else the run ends, 2).
local function with_metrics(host, port, chunk)
  return function(...)
    local endpoint, err = telemetry.prometheus { host = host, port = port }
    if endpoint == nil then
      io_stderr:write(format("sprun: --metrics=%s:%d: %s\n",
                             find(host, ":", 1, true) and "[" .. host .. "]"
                             or host, port, errors.is_error(err)
                             and err.message or errors.text(err)))
      return 2
    end
    return chunk(...)
  end
end

-- Runs the script's chunk with the options of the command line. Returns
-- the exit status and, on failure, the message to print.
function _M.main(opts, chunk, ...)
  if opts.policy ~= nil then
    local policy = require "sprun.policy"
    local reg, err = policy.load_default(opts.policy)
    if reg == nil then
      return 2, "sprun: --policy: " .. err.message
    end
    opts.on_sighup = policy.reload_default
  end
  local level = opts.telemetry_level
  if opts.log_events then
    telemetry.logger { level = level }
  end
  local dest = opts.telemetry
  if dest ~= nil then
    local target = dest == "stderr" and io_stderr
                   or dest == "stdout" and io_stdout or dest
    local id, err = telemetry.json_lines(target, { level = level })
    if id == nil then
      return 2, "sprun: --telemetry: " .. err.message
    end
  end
  if opts.metrics_host ~= nil then
    chunk = with_metrics(opts.metrics_host, opts.metrics_port, chunk)
  end
  if opts.trace == nil and opts.report == nil then
    return sched.main(opts, chunk, ...)
  end
  -- A file that cannot be written is known before the script runs.
  for _, o in ipairs { { "--trace", opts.trace }, { "--report", opts.report } } do
    if o[2] ~= nil then
      local f, ferr = io_open(o[2], "w")
      if f == nil then
        return 2, "sprun: " .. o[1] .. ": cannot write " .. ferr
      end
      f:close()
    end
  end
  -- One recording for both, started in the main task, so that its times
  -- count from the run's start on the run's clock; written whatever the
  -- run's outcome (an error, a signal, os.exit).
  local tracer, t1, virtual, script = nil, nil, false, chunk
  local function run_end()
    t1, virtual = require("sprun.report").now()
  end
  chunk = function(...)
    tracer = require("sprun.trace").start {
      path = opts.trace, buffer = opts.trace_buffer,
    }
    if opts.report ~= nil then
      -- The span drawn ends when every task is done, on the run's clock;
      -- what the loop's handles report after (a killed child reaped) is
      -- drawn too.
      require("sprun.sched.kernel").at_run_end(run_end)
    end
    return script(...)
  end
  local status, message = sched.main(opts, chunk, ...)
  if tracer == nil then
    return status, message
  end
  local failed = false
  local ok, err = tracer:stop()
  if not ok then
    io_stderr:write("sprun: --trace: ", err.message, "\n")
    failed = true
  end
  if opts.report ~= nil then
    local report = require "sprun.report"
    local name = type(arg) == "table" and arg[0]
    local page = report.render(tracer, {
      title = "sprun " .. (type(name) == "string" and name or "run"),
      t1 = t1 or tracer.t0, virtual = virtual,
    })
    ok, err = report.write(opts.report, page)
    if not ok then
      io_stderr:write("sprun: --report: ", err.message, "\n")
      failed = true
    end
  end
  if failed and status == 0 then
    status = 2
  end
  return status, message
end

return _M
