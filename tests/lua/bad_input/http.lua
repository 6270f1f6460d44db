-- Bad-input cases (see bad_input_spec.lua) of the network: sprun.dns
-- resolve, sprun.http request and its shortcuts, and http clients.
local sprun = require "sprun"

local dns = sprun.dns
local http = sprun.http

return {
  -- DNS -------------------------------------------------------------------
  { id = "dns.resolve: no host",
    call = function() return dns.resolve, nil end,
    raises = "dns.resolve: host must be a non-empty string, got nil" },
  { id = "dns.resolve: family ipv4",
    call = function() return dns.resolve, "localhost", { family = "ipv4" } end,
    raises = "dns.resolve: option 'family' must be \"any\", \"inet\" or "
      .. "\"inet6\", got \"ipv4\"" },
  { id = "dns.resolve: timeout_ms -1",
    call = function() return dns.resolve, "localhost", { timeout_ms = -1 } end,
    raises = "dns.resolve: option 'timeout_ms' must be an integer >= 0, got "
      .. "-1" },
  { id = "dns.resolve: a name that does not resolve", task = true,
    call = function() return dns.resolve, "no-such-host.invalid" end,
    returns = { nil, "dns_failed: no-such-host.invalid: unknown node or "
      .. "service" } },
  { id = "dns.resolve: an inet address asked as inet6", task = true,
    call = function()
      return dns.resolve, "127.0.0.1", { family = "inet6" }
    end,
    returns = { nil, "dns_failed: 127.0.0.1: is an inet address, not "
      .. "inet6" } },

  -- HTTP requests ---------------------------------------------------------
  { id = "http.request: no options",
    call = function() return http.request, nil end,
    raises = "http.request: options must be a table, got nil" },
  { id = "http.request: no url",
    call = function() return http.request, {} end,
    raises = "http.request: option 'url' must be an http:// or https:// "
      .. "URL, got nil" },
  { id = "http.request: an ftp url",
    call = function() return http.request, { url = "ftp://x/" } end,
    raises = "http.request: option 'url' must be an http:// or https:// URL "
      .. "(unsupported scheme 'ftp' (http and https are)), got \"ftp://x/\"" },
  { id = "http.request: a url without a host",
    call = function() return http.request, { url = "http://" } end,
    raises = "http.request: option 'url' must be an http:// or https:// URL "
      .. "(No host part in the URL), got \"http://\"" },
  { id = "http.request: option timeout",
    call = function()
      return http.request, { url = "http://127.0.0.1/", timeout = 5 }
    end,
    raises = "http.request: unknown option 'timeout' (did you mean "
      .. "'timeout_ms'?)" },
  { id = "http.request: a method with a space",
    call = function()
      return http.request, { url = "http://127.0.0.1/", method = "GE T" }
    end,
    raises = "http.request: option 'method' must be an HTTP method (a token "
      .. "such as \"GET\"), got \"GE T\"" },
  { id = "http.request: a header value with a newline",
    call = function()
      return http.request, { url = "http://127.0.0.1/",
                             headers = { ["x-a"] = "1\r\nx-b: 2" } }
    end,
    raises = "http.request: option 'headers.x-a' must not hold CR or LF in a "
      .. "value, got " .. string.format("%q", "1\r\nx-b: 2") },
  { id = "http.request: a header name with a colon",
    call = function()
      return http.request, { url = "http://127.0.0.1/",
                             headers = { ["x:a"] = "1" } }
    end,
    raises = "http.request: option 'headers' must have header names made of "
      .. "token characters, got \"x:a\"" },
  { id = "http.request: stall for_ms under a second",
    call = function()
      return http.request, { url = "http://127.0.0.1/",
                             stall = { min_bytes_per_s = 10, for_ms = 500 } }
    end,
    raises = "http.request: option 'stall.for_ms' must be an integer >= 1000 "
      .. "(measured in whole seconds), got 500" },
  { id = "http.request: http_version 3",
    call = function()
      return http.request, { url = "http://127.0.0.1/", http_version = "3" }
    end,
    raises = "http.request: option 'http_version' must be \"1.1\", \"2\" or "
      .. "\"h2c\", got \"3\"" },
  { id = "http.request: tls verify a string",
    call = function()
      return http.request, { url = "https://127.0.0.1/",
                             tls = { verify = "no" } }
    end,
    raises = "http.request: option 'tls.verify' must be a boolean, got "
      .. "\"no\"" },
  { id = "http.get: options a string",
    call = function() return http.get, "http://127.0.0.1/", "fast" end,
    raises = "http.get: options must be a table, got \"fast\"" },
  { id = "http.post: body a number",
    call = function() return http.post, "http://127.0.0.1/", 5 end,
    raises = "http.post: option 'body' must be a string, got 5" },
  { id = "http.get: a port nobody listens on", task = true,
    call = function() return http.get, "http://127.0.0.1:1/" end,
    returns = { nil, "connection_refused: GET http://127.0.0.1:1/: Failed to "
      .. "connect to 127.0.0.1 port 1 after 0 ms: Couldn't connect to "
      .. "server" } },

  -- Clients ---------------------------------------------------------------
  { id = "http.client: base_url not a url",
    call = function() return http.client, { base_url = "localhost:80" } end,
    raises = "http.client: option 'base_url' must be an http:// or https:// "
      .. "URL, got \"localhost:80\"" },
  { id = "http.client: retry a number",
    call = function() return http.client, { retry = 3 } end,
    raises = "http.client: option 'retry' must be a table of options, or "
      .. "false, got 3" },
  { id = "http.client: retry methods lower case",
    call = function()
      return http.client, { retry = { methods = { "get" } } }
    end,
    raises = "http.client.retry: option 'methods' must be a list of "
      .. "upper-case method names, got \"get\"" },
  { id = "http.client: a breaker option misspelt",
    call = function()
      return http.client, { breaker_per_origin = { failure_treshold = 3 } }
    end,
    raises = "http.client: unknown option "
      .. "'breaker_per_origin.failure_treshold' (did you mean "
      .. "'breaker_per_origin.failure_threshold'?)" },
  { id = "http.client.get: a number as path",
    call = function()
      local c = http.client {}
      return c.get, c, 5
    end,
    raises = "http.client.get: url must be a URL or a path, got 5" },
}
