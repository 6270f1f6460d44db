-- Shared helpers for the specs: running commands and reading files.
local _M = {}

_M.root = (function()
  local src = debug.getinfo(1, "S").source:sub(2)
  return (src:match("^(.*)/tests/lua/[^/]*$") or ".")
end)()
_M.build = os.getenv("SPRUN_BUILD") or (_M.root .. "/build")
_M.sprun = _M.build .. "/sprun"

function _M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

function _M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function _M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
  return path
end

-- A fresh temporary directory, removed by cleanup().
function _M.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

function _M.rmrf(path)
  os.execute("rm -rf " .. _M.shell_quote(path))
end

-- Runs a shell command line; returns { code, stdout, stderr }.
function _M.run(cmdline, stdin)
  local dir = _M.tmpdir()
  local input = ""
  if stdin then
    _M.write_file(dir .. "/in", stdin)
    input = " <" .. _M.shell_quote(dir .. "/in")
  end
  local script = string.format("(%s)%s >%s 2>%s; echo $? >%s", cmdline, input,
    _M.shell_quote(dir .. "/out"), _M.shell_quote(dir .. "/err"),
    _M.shell_quote(dir .. "/rc"))
  os.execute("sh -c " .. _M.shell_quote(script))
  local r = {
    code = tonumber((_M.read_file(dir .. "/rc"):gsub("%s+$", ""))),
    stdout = _M.read_file(dir .. "/out"),
    stderr = _M.read_file(dir .. "/err"),
  }
  _M.rmrf(dir)
  return r
end

-- Runs build/sprun with the given (unquoted) argument words.
function _M.sprun_run(args, stdin)
  local words = { _M.shell_quote(_M.sprun) }
  for _, a in ipairs(args) do words[#words + 1] = _M.shell_quote(a) end
  return _M.run(table.concat(words, " "), stdin)
end

return _M
