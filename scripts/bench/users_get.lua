-- wrk script for `scripts/bench.sh users`: GET /users/{id} with ids drawn uniformly at random
-- from [min_id, max_id]. The Authorization header comes from wrk's -H. Prints the statuses
-- (statuses.lua) and the latency tail (latency_max_us, latency_p99_us, latency_p999_us,
-- over_100ms_pct).
--   wrk ... -H 'Authorization: Bearer TOKEN' -s scripts/bench/users_get.lua URL -- MIN_ID MAX_ID
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local stats = dofile(dir .. "statuses.lua")
setup, response = stats.setup, stats.response

-- After the statuses: the latency tail wrk measured, in microseconds (its own table rounds it),
-- and the share of requests slower than 100 ms (found by bisecting wrk's percentiles).
function done(summary, latency, requests)
    stats.done(summary)
    io.write(string.format("latency_max_us %d\n", latency.max))
    io.write(string.format("latency_p99_us %d\n", latency:percentile(99)))
    io.write(string.format("latency_p999_us %d\n", latency:percentile(99.9)))
    local over = 0
    if latency.max > 100000 then
        local lo, hi = 0, 100
        for _ = 1, 40 do
            local mid = (lo + hi) / 2
            if latency:percentile(mid) > 100000 then hi = mid else lo = mid end
        end
        over = 100 - hi
    end
    io.write(string.format("over_100ms_pct %.4f\n", over))
end

local min_id, max_id, reqs

function init(args)
    stats.init()
    min_id = tonumber(args[1]) or error("usage: -- MIN_ID MAX_ID")
    max_id = tonumber(args[2]) or error("usage: -- MIN_ID MAX_ID")
    assert(max_id >= min_id, "MAX_ID < MIN_ID")
    -- Pre-build the requests when the range is small (cheap lookups in the hot path, so that wrk
    -- takes as little of the shared CPU as it can); format each one on the fly otherwise.
    if max_id - min_id < 100000 then
        reqs = {}
        for id = min_id, max_id do
            reqs[#reqs + 1] = wrk.format("GET", "/users/" .. id)
        end
    end
end

function request()
    if reqs then
        return reqs[math.random(#reqs)]
    end
    return wrk.format("GET", "/users/" .. math.random(min_id, max_id))
end
