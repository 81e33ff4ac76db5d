-- Latest-wins write of a batch of prices, optionally publishing each applied one.
--
-- For each price: apply (SET key json PX ttl) only when the key is absent, holds no readable
-- timestamp, or holds a timestamp that is not newer than the new one. Timestamps are the
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
for i = 1, #keys do
  local key = keys[i]
  local json = ARGV[base + 2 * i - 1]
  local ts = ARGV[base + 2 * i]
  local apply = true
  -- pcall: a key of another type (a stray hash) is overwritten, not an error for the batch.
  local current = redis.pcall('GET', key)
  if type(current) == 'string' then
    local current_ts = string.match(current, '"timestamp":"([^"]+)"')
    if current_ts and current_ts > ts then apply = false end
  end
  if apply then
    redis.call('SET', key, json, 'PX', ttl)
    if publish then
      redis.call('PUBLISH', channel_prefix .. string.sub(key, prefix_len + 1), json)
    end
    flags[i] = '1'
  else
    flags[i] = '0'
  end
end
return table.concat(flags)
