-- Latest-wins write of a batch of prices, optionally publishing each applied one.
--
-- For each price, in order: apply it only when the key is absent, holds no readable
-- timestamp, or holds a timestamp that is not newer than the new one (nor than a price of the
-- same key applied earlier in the batch); each key ends with its last applied price
-- (SET key json PX ttl, once per key). Timestamps are the
-- fixed-width ISO text of domain.timestamps, so string order is time order. Applied prices are
-- published on <channel prefix><symbol> with the same bytes (when asked to), in order, after
-- every key is written.
--
-- A cached timestamp newer than the future limit (the caller's clock plus MDS_MAX_FUTURE_SKEW,
-- same text form) is not trusted: that value is replaceable like an absent one, so a price
-- stamped in the future (written by anything) cannot freeze its symbol.
--
-- ARGV[1] ttl in ms, ARGV[2] "1" to PUBLISH applied prices, ARGV[3] length of the key prefix,
-- ARGV[4] channel prefix, ARGV[5] the future limit. Keys: KEYS[1..n] (standalone/Sentinel), or,
-- when no KEYS are declared (cluster, one call per node with the flag allow-cross-slot-keys),
-- ARGV[6] = n followed by the n keys. Then n pairs (json, timestamp).
-- Returns a string of n characters, "1" applied / "0" refused as older.
local ttl = ARGV[1]
local publish = ARGV[2] == '1'
local prefix_len = tonumber(ARGV[3])
local channel_prefix = ARGV[4]
local future_limit = ARGV[5]
local keys = KEYS
local base = 5
if #KEYS == 0 then
  local n = tonumber(ARGV[6])
  keys = {}
  for i = 1, n do keys[i] = ARGV[6 + i] end
  base = 6 + n
end
local flags = {}
-- Per key within this batch: the newest timestamp known (cached or applied), and the index of
-- the last applied price. A symbol that appears many times in a batch is read once and written
-- once (its last applied price); every applied price is still published, in order.
local newest = {}
local last_applied = {}
local applied = {}
local channels = {}
local function stamp_of(current)
  -- The cached record's timestamp ('' when absent, not a string, without one, or stamped
  -- beyond the future limit: then it orders nothing and is overwritten).
  if type(current) ~= 'string' then return '' end
  local _, e = string.find(current, '"timestamp":"', 1, true)
  local stamp = e and string.match(current, '^[^"]+', e + 1) or ''
  if stamp > future_limit then return '' end
  return stamp
end
if #KEYS > 0 then
  -- Standalone/Sentinel: read every distinct key with one MGET per 1000 keys (a value of
  -- another type reads as nil and is overwritten). A cluster node cannot MGET across slots,
  -- so there each key is read on first sight below.
  local distinct = {}
  for i = 1, #keys do
    local key = keys[i]
    if newest[key] == nil then
      newest[key] = false
      distinct[#distinct + 1] = key
    end
  end
  for first = 1, #distinct, 1000 do
    local last = math.min(first + 999, #distinct)
    local values = redis.call('MGET', unpack(distinct, first, last))
    for j = first, last do
      newest[distinct[j]] = stamp_of(values[j - first + 1])
    end
  end
end
for i = 1, #keys do
  local key = keys[i]
  local ts = ARGV[base + 2 * i]
  local current_ts = newest[key]
  if current_ts == nil then
    -- pcall: a key of another type (a stray hash) is overwritten, not an error for the batch.
    current_ts = stamp_of(redis.pcall('GET', key))
    newest[key] = current_ts
  end
  if current_ts > ts then
    flags[i] = '0'
  else
    newest[key] = ts
    last_applied[key] = i
    applied[#applied + 1] = i
    flags[i] = '1'
  end
end
-- Write first, publish after: a write Redis refuses (OOM under noeviction, READONLY) aborts
-- the script before anything went out, so nothing is ever published that is not cached (a
-- retried batch would otherwise publish the same prices again, older after newer).
for key, i in pairs(last_applied) do
  redis.call('SET', key, ARGV[base + 2 * i - 1], 'PX', ttl)
end
if publish then
  for j = 1, #applied do
    local i = applied[j]
    local key = keys[i]
    local channel = channels[key]
    if channel == nil then
      channel = channel_prefix .. string.sub(key, prefix_len + 1)
      channels[key] = channel
    end
    redis.call('PUBLISH', channel, ARGV[base + 2 * i - 1])
  end
end
return table.concat(flags)
