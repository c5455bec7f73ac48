-- wrk script for benchmarks/load.py: POST one CDS Hooks body, each time with the next pre-signed
-- bearer token (a fresh jti per request, as an EHR sends), optionally paced and/or count-limited.
--
--   wrk -t T -c C -d D -s hook.lua URL -- TOKENS BODY PATH THREADS [RATE] [LIMIT]
--
-- TOKENS: one token per line; thread i of T takes lines i, i+T, i+2T, ... and never reuses one
--   unless it runs out (it then starts over and counts the wrap in the summary: load.py fails the
--   run if the service answered such a replay with anything but 200).
-- RATE: requests per second for the whole run (0 = as fast as possible). Each thread keeps a
--   schedule of send times and delays each request until its slot, as wrk2 does; late slots are sent
--   at once. wrk measures latency from the actual send, so a stalled server is under-reported (the
--   coordinated-omission caveat); at half the maximum rate the schedule is rarely late.
-- LIMIT: stop each thread after this many responses (0 = run for the whole duration) and print
--   LIMIT, on which load.py interrupts wrk (SIGINT: wrk then prints its summary at once).
-- done() prints one JSON line starting with "RESULT " for load.py to read.

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } lmc_timespec;
  int clock_gettime(int clk_id, lmc_timespec *tp);
]]
local ts = ffi.new("lmc_timespec")

local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local created = 0

function setup(thread)
  thread:set("index", created)
  created = created + 1
  table.insert(threads, thread)
end

local tokens = {}
local body, path
local next_token = 1
local interval_ms, next_slot
local limit, responses = 0, 0
wraps = 0

function init(args)
  local tokens_file, body_file, nthreads = args[1], args[2], tonumber(args[4])
  path = args[3]
  local rate = tonumber(args[5] or "0")
  limit = tonumber(args[6] or "0")
  local line_no = 0
  for line in io.lines(tokens_file) do
    if line_no % nthreads == index and #line > 0 then
      tokens[#tokens + 1] = line
    end
    line_no = line_no + 1
  end
  local fh = assert(io.open(body_file, "rb"))
  body = fh:read("*a")
  fh:close()
  if rate > 0 then
    interval_ms = 1000.0 * nthreads / rate
  end
end

function request()
  if next_token > #tokens then
    next_token = 1
    wraps = wraps + 1
  end
  local token = tokens[next_token]
  next_token = next_token + 1
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end

function delay()
  if interval_ms == nil then
    return 0
  end
  local now = now_ms()
  if next_slot == nil or next_slot < now - 1000 then
    next_slot = now -- start, or more than a second behind: do not burst to catch up
  end
  local slot = next_slot
  next_slot = next_slot + interval_ms
  return math.max(0, math.floor(slot - now))
end

function response(status, headers, body)
  responses = responses + 1
  if limit > 0 and responses == limit then
    io.write("LIMIT\n") -- wrk itself waits out -d; load.py answers this line with SIGINT
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local wrapped = 0
  for _, thread in ipairs(threads) do
    wrapped = wrapped + (thread:get("wraps") or 0)
  end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"mean_us": %.1f, "token_wraps": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, wrapped))
end
