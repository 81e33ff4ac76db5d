-- Latest-wins write of a batch of prices, optionally publishing each applied one.
--
-- For each price, in order: apply it only when the key is absent, holds no readable
-- timestamp, or holds a timestamp that is not newer than the new one (nor than a price of the
-- same key applied earlier in the batch); each key ends with its last applied price
-- (SET key json PX ttl, once per key). Timestamps are the
-- fixed-width ISO text of domain.timestamps, so string order is time order. Applied prices are
-- published on <channel prefix><symbol> with the same bytes (when asked to).
--
-- ARGV[1] ttl in ms, ARGV[2] "1" to PUBLISH applied prices, ARGV[3] length of the key prefix,
-- ARGV[4] channel prefix. Keys: KEYS[1..n] (standalone/Sentinel), or, when no KEYS are declared
-- (cluster, one call per node with the flag allow-cross-slot-keys), ARGV[5] = n followed by
-- the n keys. Then n pairs (json, timestamp).
-- Returns a string of n characters, "1" applied / "0" refused as older.
local ttl = ARGV[1]
local publish = ARGV[2] == '1'
local prefix_len = tonumber(ARGV[3])
local channel_prefix = ARGV[4]
local keys = KEYS
local base = 4
if #KEYS == 0 then
  local n = tonumber(ARGV[5])
  keys = {}
  for i = 1, n do keys[i] = ARGV[5 + i] end
  base = 5 + n
end
local flags = {}
-- Per key within this batch: the newest timestamp known (cached or applied), and the index of
-- the last applied price. A symbol that appears many times in a batch is read once and written
-- once (its last applied price); every applied price is still published, in order.
local newest = {}
local last_applied = {}
for i = 1, #keys do
  local key = keys[i]
  local ts = ARGV[base + 2 * i]
  local current_ts = newest[key]
  if current_ts == nil then
    -- pcall: a key of another type (a stray hash) is overwritten, not an error for the batch.
    local current = redis.pcall('GET', key)
    current_ts = type(current) == 'string' and string.match(current, '"timestamp":"([^"]+)"')
      or ''
    newest[key] = current_ts
  end
  if current_ts > ts then
    flags[i] = '0'
  else
    newest[key] = ts
    last_applied[key] = i
    if publish then
      redis.call('PUBLISH', channel_prefix .. string.sub(key, prefix_len + 1),
        ARGV[base + 2 * i - 1])
    end
    flags[i] = '1'
  end
end
for key, i in pairs(last_applied) do
  redis.call('SET', key, ARGV[base + 2 * i - 1], 'PX', ttl)
end
return table.concat(flags)
