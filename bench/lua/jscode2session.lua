-- GET /sns/jscode2session with a login code nobody used yet on every request (codes are single use; a
-- reused one would measure the refusal instead). The setup hook (bench/routes.py, jscode2session_codes)
-- writes the codes and hands over:
--   BENCH_CODES_FILE  one login code per line
--   BENCH_APPID       the app the codes are for
--   BENCH_SECRET      its AppSecret
--   BENCH_THREADS     wrk's thread count when it is not 1 (thread n takes every BENCH_THREADS-th code)
-- The harness runs wrk twice (warm-up, then the measured run): each run starts where the previous one
-- stopped, read from BENCH_CODES_FILE .. ".next", which done() writes. Requests are formatted once in
-- init(), so request() only hands out the next string.
local codes_file = os.getenv("BENCH_CODES_FILE")
local appid = os.getenv("BENCH_APPID")
local secret = os.getenv("BENCH_SECRET")
local stride = tonumber(os.getenv("BENCH_THREADS") or "1")
local state_file = codes_file .. ".next"
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
    error("jscode2session.lua: set BENCH_THREADS to wrk's thread count")
  end
  local prefix = "/sns/jscode2session?grant_type=authorization_code&appid=" .. appid ..
    "&secret=" .. secret .. "&js_code="
  local index = 0
  for code in io.lines(codes_file) do
    index = index + 1
    if index >= start and (index - start) % stride == my_lane then
      queue[#queue + 1] = wrk.format("GET", prefix .. code)
    end
  end
end

function request()
  position = position + 1
  local next_request = queue[position]
  if next_request == nil then
    error("jscode2session.lua: out of login codes (raise JSCODE2SESSION_CODES in bench/routes.py)")
  end
  return next_request
end

function done(summary, latency, requests)
  local f = io.open(state_file, "w")
  f:write(tostring(start + (summary.requests + in_flight_margin) * stride))
  f:close()
end
