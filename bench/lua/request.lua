-- The request every wrk connection sends, built once at start-up (no request() function, so wrk keeps its
-- fast path). A route's setup hook hands the parts over in the environment:
--   BENCH_METHOD        HTTP method (the harness sets it from the route)
--   BENCH_BODY          request body, sent as JSON unless BENCH_CONTENT_TYPE says otherwise
--   BENCH_CONTENT_TYPE  content type of the body
--   BENCH_TOKEN         bearer token for the Authorization header
wrk.method = os.getenv("BENCH_METHOD") or "GET"

local body = os.getenv("BENCH_BODY")
if body ~= nil and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
end

local token = os.getenv("BENCH_TOKEN")
if token ~= nil and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end
