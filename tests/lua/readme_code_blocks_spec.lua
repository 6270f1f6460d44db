-- Every code block of README.md runs, and prints what the README says.
--
-- In lua and c blocks, a line ending in `--> text` (`// --> text` in C)
-- says the next line of output is `text`; a lua block whose first line is
-- `-- run with: sprun FLAGS` runs with those flags. sh blocks run with HOME set to a
-- fresh directory and build/sprun replaced by the sprun under test;
-- `make demo` and `make test` lines are checked with
-- `make -n` (running them here would recurse), and `# --> text` lines give
-- the expected output. text blocks must match `sprun -h`.
local h = require "helpers"

local readme = h.read_file(h.root .. "/README.md")

local blocks = {}
do
  local line_no = 0
  local cur
  for line in (readme .. "\n"):gmatch("([^\n]*)\n") do
    line_no = line_no + 1
    if cur then
      if line:match("^```%s*$") then
        blocks[#blocks + 1] = cur
        cur = nil
      else
        cur.lines[#cur.lines + 1] = line
      end
    else
      local lang = line:match("^```(%S*)%s*$")
      if lang then
        cur = { lang = lang, line = line_no + 1, lines = {} }
      end
    end
  end
  assert(cur == nil, "README.md: a code block is not closed")
end

local function expected(lines, marker)
  local out = {}
  for _, l in ipairs(lines) do
    local e = l:match(marker)
    if e then out[#out + 1] = e end
  end
  return out
end

local function output_lines(s)
  local out = {}
  for l in s:gmatch("([^\n]*)\n") do out[#out + 1] = l end
  return out
end

local runners = {}

function runners.lua(b, dir)
  local path = h.write_file(dir .. "/block.lua", table.concat(b.lines, "\n") .. "\n")
  -- A first line "-- run with: sprun --flag" names the options to run with.
  local args = {}
  for flag in (b.lines[1]:match("^%-%- run with: sprun (.*)$") or ""):gmatch("%S+") do
    args[#args + 1] = flag
  end
  args[#args + 1] = path
  local r = h.sprun_run(args)
  assert.are.equal(0, r.code, r.stderr)
  assert.are.same(expected(b.lines, "%-%-> (.*)$"), output_lines(r.stdout))
end

function runners.c(b, dir)
  local src = h.write_file(dir .. "/block.c", table.concat(b.lines, "\n") .. "\n")
  local r = h.run("cc -std=c11 -Wall -Wextra -Werror -I" .. h.shell_quote(h.root
    .. "/runtime/include") .. " -o " .. h.shell_quote(dir .. "/block") .. " "
    .. h.shell_quote(src) .. " " .. h.shell_quote(h.build .. "/libsprun.a")
    .. " -lm && " .. h.shell_quote(dir .. "/block"))
  assert.are.equal(0, r.code, r.stderr)
  assert.are.same(expected(b.lines, "// %-%-> (.*)$"), output_lines(r.stdout))
end

function runners.sh(b, dir)
  local script = {}
  for _, l in ipairs(b.lines) do
    local target = l:match("^make (%a+)%s") or l:match("^make (%a+)$")
    if target == "test" or target == "demo" then
      l = "make -n " .. target .. " >/dev/null"
    end
    -- The sprun under test (the sanitizer build under `make check`).
    l = l:gsub("^build/sprun(%s)", function(space)
      return h.shell_quote(h.sprun) .. space
    end)
    script[#script + 1] = l
  end
  local path = h.write_file(dir .. "/block.sh", "set -e\n" .. table.concat(script, "\n") .. "\n")
  local r = h.run("cd " .. h.shell_quote(h.root) .. " && HOME=" .. h.shell_quote(dir)
    .. " BUILD=" .. h.shell_quote(h.build) .. " sh " .. h.shell_quote(path))
  assert.are.equal(0, r.code, r.stdout .. r.stderr)
  local want = expected(b.lines, "^# %-%-> (.*)$")
  if #want > 0 then
    local got = output_lines(r.stdout)
    assert.are.same(want, { unpack(got, #got - #want + 1) })
  end
end

-- A tree block draws folders and files: a line that starts before the
-- description column (17) starts with a path (a folder ends in "/"),
-- indented two spaces under its folder; the words of the description
-- that are file names (x.lua, x.c, x.h), on that line or on the lines
-- that carry it on (indented to the column), name files of the folder.
-- Every path and every file named must exist, and a folder that names
-- files must name every .lua, .c and .h file it has.
local function exists(path)
  local f = io.open(h.root .. "/" .. path, "r")
  if f then f:close() end
  return f ~= nil
end

function runners.tree(b)
  local parents, folder, named = {}, nil, {}
  for _, line in ipairs(b.lines) do
    local indent, first, rest = line:match("^( *)(%S+)(.*)$")
    if #indent >= 17 then
      rest = line
    else
      local depth = #indent / 2
      assert(depth % 1 == 0 and depth <= #parents,
             "README.md: a layout line is not indented under a folder: "
             .. line)
      for i = #parents, depth + 1, -1 do parents[i] = nil end
      local path = table.concat(parents) .. first
      assert(exists(path), "README.md: the layout names " .. path
             .. ", which is missing")
      folder = nil
      if first:sub(-1) == "/" then
        parents[depth + 1] = first
        folder = path
        named[folder] = named[folder] or {}
      end
    end
    for _, pat in ipairs { "%f[%w_%-]([%w_%-]+%.lua)%f[^%w_.%-]",
                           "%f[%w_%-]([%w_%-]+%.[ch])%f[^%w_.%-]" } do
      for name in rest:gmatch(pat) do
        assert(folder, "README.md: " .. name .. " is named outside a folder")
        named[folder][name] = true
        assert(exists(folder .. name), "README.md: the layout names "
               .. folder .. name .. ", which is missing")
      end
    end
  end
  for dir, files in pairs(named) do
    if next(files) then
      local p = io.popen("ls " .. h.shell_quote(h.root .. "/" .. dir))
      for f in p:lines() do
        if f:match("%.lua$") or f:match("%.[ch]$") then
          assert(files[f], "README.md: the layout of " .. dir
                 .. " does not name " .. f)
        end
      end
      p:close()
    end
  end
end

-- A python block is an excerpt of the file its first line names
-- ("# scripts/x.py"): its lines, in a row.
function runners.python(b)
  local name = b.lines[1]:match("^# (%S+%.py)$")
  assert(name, "README.md:" .. b.line .. ": a python block starts with "
         .. "# <path of the file it is taken from>")
  local text = h.read_file(h.root .. "/" .. name)
  local excerpt = table.concat(b.lines, "\n", 2) .. "\n"
  assert(text:find(excerpt, 1, true), "README.md:" .. b.line
         .. ": not lines of " .. name .. " in a row")
end

-- A text block is `sprun -h`: one that starts with its first line is the
-- whole of it; any other is an excerpt of whole entries, lines that
-- follow each other there, from an option's first line to the last line
-- of its description (the next line is not one more of them).
function runners.text(b)
  local usage = h.sprun_run({ "-h" }).stdout
  local text = table.concat(b.lines, "\n") .. "\n"
  if b.lines[1] and usage:sub(1, #b.lines[1]) == b.lines[1] then
    assert.are.equal(usage, text)
    return
  end
  local at = ("\n" .. usage):find("\n" .. text, 1, true)
  assert(at, "README.md:" .. b.line .. ": not lines of sprun -h in a row")
  assert(b.lines[1]:match("^  %-"), "README.md:" .. b.line
         .. ": an excerpt of sprun -h starts with an option")
  local next_line = usage:sub(at + #text):match("^[^\n]*") or ""
  assert(not next_line:match("^     +%S"), "README.md:" .. b.line
         .. ": the excerpt of sprun -h cuts an entry short before: "
         .. next_line)
end

describe("README.md", function()
  it("has code blocks, each of a known kind", function()
    assert.is_true(#blocks >= 10)
    for _, b in ipairs(blocks) do
      assert.is_truthy(runners[b.lang], "README.md:" .. b.line
        .. ": code block of unknown kind '" .. b.lang .. "'")
    end
  end)

  for _, b in ipairs(blocks) do
    it("block at line " .. b.line .. " (" .. b.lang .. ") runs as shown", function()
      local dir = h.tmpdir()
      local ok, err = pcall(runners[b.lang], b, dir)
      h.rmrf(dir)
      assert(ok, err)
    end)
  end
end)
