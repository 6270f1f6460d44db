-- Bad-input cases (see bad_input_spec.lua), policy files: through `sprun
-- --policy` and sprun.policy.load. They are the table's view of them; the
-- spec of sprun.policy (policy_spec) has the full list of bad policy files.
local sprun = require "sprun"
local fx = require "bad_input.fixtures"

local load_policy = fx.load_policy

return {
  { id = "policyfile: --policy with a bad value",
    argv = { "--policy", "$DIR/pol_badkey.lua", "-e", "print(1)" }, code = 2,
    stderr = "sprun: --policy: $DIR/pol_badkey.lua: pipelines.p.retry."
      .. "max_attempts must be an integer >= 1, got 0\n" },
  { id = "policyfile: --policy without a file",
    argv = { "--policy" }, code = 2,
    stderr = "sprun: option '--policy' needs a file (see sprun -h)\n" },
  { id = "policyfile: path not a string",
    call = function() return sprun.policy.load, 42 end,
    raises = "policy.load: path must be a non-empty string, got 42" },
  { id = "policyfile: syntax error",
    call = load_policy("pol_syntax.lua"),
    returns = { nil, "policy_error: $DIR/pol_syntax.lua:2: unexpected "
      .. "symbol near '<eof>'" } },
  { id = "policyfile: does not return a table",
    call = load_policy("pol_notable.lua"),
    returns = { nil, "policy_error: $DIR/pol_notable.lua: the file must "
      .. "return a table, got 42" } },
  { id = "policyfile: value out of range",
    call = load_policy("pol_badkey.lua"),
    returns = { nil, "policy_error: $DIR/pol_badkey.lua: pipelines.p.retry."
      .. "max_attempts must be an integer >= 1, got 0" } },
  { id = "policyfile: misspelt option",
    call = load_policy("pol_unknown.lua"),
    returns = { nil, "policy_error: $DIR/pol_unknown.lua: breakers.db: "
      .. "unknown key 'failure_treshold' (did you mean 'failure_threshold'?)" } },
  { id = "policyfile: misspelt section",
    call = load_policy("pol_section.lua"),
    returns = { nil, "policy_error: $DIR/pol_section.lua: unknown key "
      .. "'breakerz' (did you mean 'breakers'?)" } },
  { id = "policyfile: the file raises",
    call = load_policy("pol_raise.lua"),
    returns = { nil, "policy_error: $DIR/pol_raise.lua:1: boom" } },
  { id = "policyfile: names a breaker that does not exist",
    call = load_policy("pol_ref.lua"),
    returns = { nil, "policy_error: $DIR/pol_ref.lua: pipelines.p.breaker "
      .. "names no breaker \"nosuch\" (breakers: none defined)" } },
}
