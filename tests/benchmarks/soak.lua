-- wrk script for `make soak`: post.lua's bodies and summary, at a fixed rate rather than as many
-- requests as the server answers. Each wrk thread keeps a schedule, one slot every INTERVAL_MS, and
-- delay() (called before each request of a connection) waits for the next free slot: the rate does not
-- depend on the answers' latency, as a pause per connection would (that held 58% of the peak, not 80%).
-- Usage: wrk -t T -s soak.lua URL -- BODIES_FILE INTERVAL_MS   (INTERVAL_MS = T / rate * 1000)
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "post.lua")

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } soak_timespec;
int clock_gettime(int clock_id, soak_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local clock = ffi.new("soak_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

local post_init = init
local interval_ms = 0
local next_slot = nil

function init(args)
  post_init(args)
  interval_ms = tonumber(args[2]) or 0
end

function delay()
  local now = now_ms()
  -- A thread that fell behind starts again from now: it does not burst to catch up.
  if next_slot == nil or next_slot < now then
    next_slot = now
  end
  local slot = next_slot
  next_slot = next_slot + interval_ms
  -- wrk takes whole milliseconds; the slots themselves stay exact, so the rounding does not add up.
  return math.floor(slot - now + 0.5)
end
