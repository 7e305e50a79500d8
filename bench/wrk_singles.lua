-- wrk: single-text POST /v1/embeddings requests cycling through a corpus, so the client's own cost is C, not Python.
--   wrk -t1 -c64 -d20s -s bench/wrk_singles.lua http://127.0.0.1:PORT -- CORPUS N
-- Prints the texts and tokens embedded per second (tokens from each reply's usage).
local requests, tokens, count = {}, 0, 0

local function json_string(text)
  return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function init(args)
  local n = tonumber(args[2] or "1000")
  for line in io.lines(args[1]) do
    if #requests >= n then break end
    local body = '{"input": ' .. json_string(line) .. ', "model": "default"}'
    requests[#requests + 1] = wrk.format("POST", "/v1/embeddings", {["Content-Type"] = "application/json"}, body)
  end
end

local next_request = 0
function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end

function response(status, headers, body)
  if status == 200 then
    count = count + 1
    tokens = tokens + tonumber(body:match('"total_tokens":(%d+)'))
  end
end

function done(summary, latency, requests_)
  local seconds = summary.duration / 1e6
  io.write(string.format("wrk: %d requests with status 200 (%d errors), %.0f texts/s, latency p50 %.0f ms p99 %.0f ms\n",
    summary.requests, summary.errors.status + summary.errors.read + summary.errors.connect + summary.errors.timeout,
    summary.requests / seconds, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
