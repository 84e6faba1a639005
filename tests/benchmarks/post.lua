-- wrk script: POST the JSON bodies of a file (one per line) in rotation, and print one machine-readable
-- summary line at the end. Usage: wrk -s post.lua URL -- BODIES_FILE
local requests = {}
local next_index = 1

function init(args)
  local path = args[1]
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, line)
    end
  end
  assert(#requests > 0, "no request bodies in " .. tostring(path))
  -- Each wrk thread starts at a different body.
  next_index = math.random(#requests)
end

function request()
  local current = requests[next_index]
  next_index = next_index % #requests + 1
  return current
end

function done(summary, latency, _)
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect, errors.read, errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
