-- wrk script for `scripts/bench.sh users`: GET /users/{id} with ids drawn uniformly at random
-- from [min_id, max_id]. The Authorization header comes from wrk's -H.
--   wrk ... -H 'Authorization: Bearer TOKEN' -s scripts/bench/users_get.lua URL -- MIN_ID MAX_ID
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local stats = dofile(dir .. "statuses.lua")
setup, response, done = stats.setup, stats.response, stats.done

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
