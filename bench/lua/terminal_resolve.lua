-- POST /v1/terminals/resolve with a code nobody resolved yet and a fresh signed nonce on every request (a
-- code or a nonce used again would measure the refusal instead). The setup hook (bench/onecode_terminals.py,
-- terminal_resolve) signs the requests ahead and hands over:
--   BENCH_REQUESTS_FILE  one request a line: nonce TAB signature TAB JSON body
--   BENCH_TERMINAL_ID    the validator's id (X-Terminal-Id)
--   BENCH_TIMESTAMP      the X-Timestamp every request was signed with
--   BENCH_PATH           the path the requests were signed for
--   BENCH_THREADS        wrk's thread count when it is not 1 (thread n takes every BENCH_THREADS-th line)
-- The harness runs wrk twice (warm-up, then the measured run): each run starts where the previous one
-- stopped, read from BENCH_REQUESTS_FILE .. ".next", which done() writes. Requests are formatted once in
-- init(), so request() only hands out the next string.
local requests_file = os.getenv("BENCH_REQUESTS_FILE")
local terminal_id = os.getenv("BENCH_TERMINAL_ID")
local timestamp = os.getenv("BENCH_TIMESTAMP")
local path = os.getenv("BENCH_PATH")
local stride = tonumber(os.getenv("BENCH_THREADS") or "1")
local state_file = requests_file .. ".next"
-- Requests sent but not answered when wrk stops may have used a code too.
local in_flight_margin = 1000

local function read_start()
  local f = io.open(state_file, "r")
  if f == nil then
    return 1
  end
  local n = tonumber(f:read("*l"))
  f:close()
  return n or 1
end

local start = read_start()
local threads = 0

function setup(thread)
  thread:set("lane", threads)
  threads = threads + 1
end

local queue = {}
local position = 0

function init(args)
  local my_lane = lane or 0
  if my_lane >= stride then
    error("terminal_resolve.lua: set BENCH_THREADS to wrk's thread count")
  end
  local index = 0
  for line in io.lines(requests_file) do
    index = index + 1
    if index >= start and (index - start) % stride == my_lane then
      local nonce, signature, body = line:match("^([^\t]+)\t([^\t]+)\t(.+)$")
      local headers = {
        ["Content-Type"] = "application/json",
        ["X-Terminal-Id"] = terminal_id,
        ["X-Timestamp"] = timestamp,
        ["X-Nonce"] = nonce,
        ["X-Signature"] = signature,
      }
      queue[#queue + 1] = wrk.format("POST", path, headers, body)
    end
  end
end

function request()
  position = position + 1
  local next_request = queue[position]
  if next_request == nil then
    error("terminal_resolve.lua: out of signed requests (raise RESOLVE_REQUESTS in bench/onecode_terminals.py)")
  end
  return next_request
end

function done(summary, latency, requests)
  local f = io.open(state_file, "w")
  f:write(tostring(start + (summary.requests + in_flight_margin) * stride))
  f:close()
end
