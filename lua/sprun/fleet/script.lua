-- The script a fleet's sync runs in Redis (EVALSHA, once per interval per
-- node), as text, and the reading of its reply (internal to sprun.fleet).
--
-- One call carries every member of the node (breakers and monitors). For
-- each, KEYS[i] is the member's key base, `<prefix><b|m>{<name>}`: every
-- key of a member carries its name as a hash tag, so that one member's
-- keys share a Redis Cluster slot. Under the base:
--   :n  zset  node -> when it last synced this member (Redis ms)
--   :t  hash  node -> its running totals as last sent ("c f s r x")
--   :c  hash  "<bucket>:<c|f|s|r|x>" -> counts added in that bucket,
--             "all:<k>" -> every count ever added (what tests compare)
--   :x  zset  node -> when it last added a failure or a crash
--   :v  zset  node -> until when its open vote holds
--   :s  hash  open (0/1), since (ms), epoch (moves on at each fleet close)
--   :l  string  the node holding the probe lease (SET NX PX)
--   :m  string  "force_open" or "disable": fleet-wide manual state
-- Every key gets an expiry at each sync, so a fleet that stops leaves
-- nothing behind.
--
-- The rules, with Redis's TIME as the only clock:
-- * Counts are running totals, never deltas: the script adds what grew
--   since the node's stored totals (or, with none stored, since the
--   totals the node last saw acknowledged). A sync that timed out but
--   was applied, then sent again, adds nothing twice; one that was lost
--   is carried by the next. Totals that went down (a reset breaker)
--   count from zero.
-- * A vote counts only if the node saw the current epoch (or none yet, a
--   node new to the fleet): a vote cast before the fleet closed is not a
--   vote to open it again.
-- * Closed, the fleet opens on a quorum: at least min_nodes live nodes,
--   at least 2 open votes, and votes >= min_share of the live nodes; or
--   (rate windows) when the fleet's window reaches the breaker's failure
--   or slow-call rate with min_calls calls, failures coming from at
--   least 2 nodes and min_nodes live. One node never opens another.
-- * Open, after reset_timeout_ms the first node to ask takes the probe
--   lease. The holder reports its probe: "ok" closes the fleet (epoch
--   moves on, votes, counts and lease go), "failed" restarts the timeout
--   and frees the lease; the lease expires if the holder goes silent.
--
-- * A sync carries its version (the node's boot, wall-clock seconds when
--   its fleet connected, then its monotonic clock in ms when it was
--   sent). One older than the version stored with the node's totals is a
--   late copy (a timed-out sync that reached Redis after a newer one):
--   it adds nothing, casts no vote and reports no probe.
--
-- ARGV: node, expire_ms, lease_ms, boot, clock, then 4 per member: its totals
-- ("c f s r x": calls, failures, slow, rejections, crashes), the totals
-- last acknowledged, "vote epoch probe" (probe 0 none, 1 ok, 2 failed)
-- and "window_ms buckets reset_ms min_calls failure_rate slow_rate
-- min_nodes min_share" (rates -1: none). The reply: Redis's time in ms,
-- then per member "live votes calls failures slow rejections crashes
-- open open_ms epoch failing lease ctl" (lease and ctl "-" for none).

local tonumber = tonumber
local match = string.match
local gmatch = string.gmatch

local _M = {}

_M.SOURCE = [==[
local node, expire, lease_ms = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local boot, clock = tonumber(ARGV[4]), tonumber(ARGV[5])
local version = ' ' .. ARGV[4] .. ' ' .. ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = { string.format('%d', now) }
local K = { 'c', 'f', 's', 'r', 'x' }
local IDX = { c = 1, f = 2, s = 3, r = 4, x = 5 }
local function nums(s)
  local r = {}
  for v in string.gmatch(s, '%S+') do r[#r + 1] = tonumber(v) end
  return r
end
local function d(n) return string.format('%d', n) end
for i = 1, #KEYS do
  local b, a = KEYS[i], (i - 1) * 4 + 6
  local cur, acked = nums(ARGV[a]), nums(ARGV[a + 1])
  local st, cf = nums(ARGV[a + 2]), nums(ARGV[a + 3])
  local window, nb, reset_ms = cf[1], cf[2], cf[3]
  local min_calls, frate, srate = cf[4], cf[5], cf[6]
  local min_nodes, min_share = cf[7], cf[8]
  local width = math.ceil(window / nb)
  local keep = 2 * math.max(window, expire, reset_ms) + expire
  local kn, kt, kc, kx = b .. ':n', b .. ':t', b .. ':c', b .. ':x'
  local kv, ks, kl, km = b .. ':v', b .. ':s', b .. ':l', b .. ':m'

  redis.call('ZADD', kn, d(now), node)
  redis.call('ZREMRANGEBYSCORE', kn, '-inf', d(now - expire))
  local live = redis.call('ZCARD', kn)

  local stored = redis.call('HGET', kt, node)
  local old = stored and nums(stored) or acked
  local late = stored and old[6] ~= nil
               and (boot < old[6] or (boot == old[6] and clock <= old[7]))
  local bucket = math.floor(now / width)
  if not late then
    local down = false
    for k = 1, 5 do
      if cur[k] < old[k] then down = true end
    end
    local failed = 0
    for k = 1, 5 do
      local n = down and cur[k] or cur[k] - old[k]
      if n > 0 then
        redis.call('HINCRBY', kc, d(bucket) .. ':' .. K[k], d(n))
        redis.call('HINCRBY', kc, 'all:' .. K[k], d(n))
        if k == 2 or k == 5 then failed = failed + n end
      end
    end
    redis.call('HSET', kt, node, ARGV[a] .. version)
    if failed > 0 then redis.call('ZADD', kx, d(now), node) end
  end
  redis.call('ZREMRANGEBYSCORE', kx, '-inf', d(now - window))

  local sums = { 0, 0, 0, 0, 0 }
  local h = redis.call('HGETALL', kc)
  local oldest = bucket - nb + 1
  for j = 1, #h, 2 do
    local bk, k = string.match(h[j], '^(%d+):(%a)$')
    if bk then
      if tonumber(bk) < oldest then
        redis.call('HDEL', kc, h[j])
      else
        sums[IDX[k]] = sums[IDX[k]] + tonumber(h[j + 1])
      end
    end
  end

  local s = redis.call('HMGET', ks, 'open', 'since', 'epoch')
  local open = s[1] == '1'
  local since, epoch = tonumber(s[2]) or 0, tonumber(s[3]) or 0
  local vote, seen, probe = st[1], st[2], st[3]
  if late then
    probe = 0
  elseif vote == 1 and (seen == epoch or seen < 0) then
    redis.call('ZADD', kv, d(now + expire), node)
  else
    redis.call('ZREM', kv, node)
  end
  redis.call('ZREMRANGEBYSCORE', kv, '-inf', d(now))
  local votes = redis.call('ZCARD', kv)
  local failing = redis.call('ZCARD', kx)
  local lease = redis.call('GET', kl)

  if not open then
    local quorum = live >= min_nodes and votes >= 2
                   and votes >= min_share * live - 1e-9
    local calls = sums[1]
    local rate = frate >= 0 and live >= min_nodes and failing >= 2
                 and calls > 0 and calls >= min_calls
                 and (sums[2] / calls >= frate
                      or (srate >= 0 and sums[3] / calls >= srate))
    if quorum or rate then
      open, since = true, now
      redis.call('HSET', ks, 'open', '1', 'since', d(now), 'epoch', d(epoch))
      redis.call('DEL', kl)
      lease = false
    end
  elseif lease == node then
    if probe == 1 then
      epoch = epoch + 1
      open, since = false, now
      redis.call('HSET', ks, 'open', '0', 'since', d(now), 'epoch', d(epoch))
      redis.call('DEL', kv, kl, kx)
      for j = 1, #h, 2 do
        if string.match(h[j], '^%d+:') then redis.call('HDEL', kc, h[j]) end
      end
      lease, votes, failing = false, 0, 0
      sums = { 0, 0, 0, 0, 0 }
    elseif probe == 2 then
      since = now
      redis.call('HSET', ks, 'since', d(now))
      redis.call('DEL', kl)
      lease = false
    else
      redis.call('PEXPIRE', kl, d(lease_ms))
    end
  elseif not lease and now - since >= reset_ms then
    if redis.call('SET', kl, node, 'NX', 'PX', d(lease_ms)) then
      lease = node
    end
  end

  for _, k in ipairs({ kn, kt, kc, kx, kv, ks }) do
    redis.call('PEXPIRE', k, d(keep))
  end
  local ctl = redis.call('GET', km)
  if ctl then redis.call('PEXPIRE', km, d(keep)) end
  out[#out + 1] = table.concat({ live, votes, sums[1], sums[2], sums[3],
    sums[4], sums[5], open and 1 or 0, open and now - since or 0, epoch,
    failing, lease or '-', ctl or '-' }, ' ')
end
return out
]==]

-- A member's line of the reply as a table.
function _M.read(line)
  local f = {}
  for v in gmatch(line, "%S+") do
    f[#f + 1] = v
  end
  if #f ~= 13 then
    return nil
  end
  return {
    live = tonumber(f[1]), votes = tonumber(f[2]),
    calls = tonumber(f[3]), failures = tonumber(f[4]),
    slow = tonumber(f[5]), rejections = tonumber(f[6]),
    crashes = tonumber(f[7]), open = f[8] == "1",
    open_ms = tonumber(f[9]), epoch = tonumber(f[10]),
    failing_nodes = tonumber(f[11]),
    lease = f[12] ~= "-" and f[12] or nil,
    control = f[13] ~= "-" and f[13] or nil,
  }
end

-- Redis's time of the reply, in ms.
function _M.time(first)
  return tonumber(match(first or "", "^%d+$"))
end

return _M
