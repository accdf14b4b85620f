-- wrk script for `scripts/bench.sh users`: a light, paced GET /health client that measures
-- latency while something else loads the server. Each connection waits DELAY_MS before each
-- request, so with -c C the rate is at most C * 1000 / DELAY_MS requests per second (wrk has no
-- fixed-rate mode; this is closed-loop with think time, so a slow response delays the next one).
--   wrk -t1 -c4 ... -s scripts/bench/health_paced.lua URL/health -- DELAY_MS
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local stats = dofile(dir .. "statuses.lua")
setup, response, done = stats.setup, stats.response, stats.done

local delay_ms

function init(args)
    stats.init()
    delay_ms = tonumber(args[1]) or 20
end

function delay()
    return delay_ms
end
