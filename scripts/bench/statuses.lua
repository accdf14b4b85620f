-- Shared by the wrk scripts of scripts/bench.sh (loaded with dofile, not run on its own).
-- Counts responses per HTTP status in every wrk thread and, when the run is over, prints
--   status <code> <count>      one line per status seen, summed over the threads
--   duration_us <n>            the run's duration as wrk measured it
-- so that the caller can count 200s apart from 401/503/... (wrk itself lumps every status
-- >= 300 into "Non-2xx or 3xx responses").
local M = {}
local threads = {}

function M.setup(thread)
    thread:set("thread_index", #threads + 1)
    table.insert(threads, thread)
end

-- Called from each script's init(); `statuses` is a global of the thread's environment so that
-- done() can read it back with thread:get().
function M.init()
    statuses = {}
    math.randomseed(os.time() * 1000 + (thread_index or 0))
end

function M.response(status)
    statuses[status] = (statuses[status] or 0) + 1
end

function M.done(summary)
    local total = {}
    for _, t in ipairs(threads) do
        for code, n in pairs(t:get("statuses") or {}) do
            total[code] = (total[code] or 0) + n
        end
    end
    local codes = {}
    for code in pairs(total) do table.insert(codes, code) end
    table.sort(codes)
    for _, code in ipairs(codes) do
        io.write(string.format("status %d %d\n", code, total[code]))
    end
    io.write(string.format("duration_us %d\n", summary.duration))
end

return M
