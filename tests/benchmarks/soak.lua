-- wrk script for `make soak`: post.lua's bodies and summary, with a pause before each request, so that
-- the connections hold a rate rather than as many requests as the server answers.
-- Usage: wrk -s soak.lua URL -- BODIES_FILE PAUSE_MS
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "post.lua")

local post_init = init
local pause_ms = 0

function init(args)
  post_init(args)
  pause_ms = tonumber(args[2]) or 0
end

-- wrk calls delay() before each request of a connection: the pause, in milliseconds.
function delay()
  return pause_ms
end
