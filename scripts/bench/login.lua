-- wrk script for `scripts/bench.sh users`: POST /auth/login with a JSON body, the same account
-- every time.
--   wrk ... -s scripts/bench/login.lua URL -- EMAIL PASSWORD
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local stats = dofile(dir .. "statuses.lua")
setup, response, done = stats.setup, stats.response, stats.done

local function json_string(s)
    return '"' .. s:gsub('[%c"\\]', function(c)
        return string.format("\\u%04x", c:byte())
    end) .. '"'
end

function init(args)
    stats.init()
    local email = args[1] or error("usage: -- EMAIL PASSWORD")
    local password = args[2] or error("usage: -- EMAIL PASSWORD")
    wrk.method = "POST"
    wrk.path = "/auth/login"
    wrk.headers["Content-Type"] = "application/json"
    wrk.body = "{\"email\":" .. json_string(email) .. ",\"password\":" .. json_string(password) .. "}"
    -- wrk.init() builds the (static) request from these after init() returns.
end
