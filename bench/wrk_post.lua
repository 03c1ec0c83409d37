-- wrk_post.lua: POST one chat completion per request (bench/run.sh).
--   BENCH_BODY     the JSON body (default: a small non-streaming request for bench/echo-1)
--   BENCH_HEADERS  extra headers, "Name: value" separated by "|" (Portkey's routing headers)
-- done() prints one line "WRKJSON {...}" with the counts and latency percentiles in us.
-- No response() callback on purpose: it would take wrk off its fast path.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or
  '{"model":"bench/echo-1","messages":[{"role":"user","content":"Say hello"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
local extra = os.getenv("BENCH_HEADERS")
if extra and #extra > 0 then
  for h in string.gmatch(extra, "[^|]+") do
    local name, value = string.match(h, "^%s*([^:]+):%s*(.-)%s*$")
    if name then wrk.headers[name] = value end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_mean":%.1f,"lat_min":%d,' ..
    '"lat_p50":%d,"lat_p90":%d,"lat_p99":%d,"lat_p999":%d,"lat_max":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency.min, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
