-- The requests wrk sends for each benchmark workload, and the one-line result it prints.
--
--   wrk -s workloads.lua URL -- WORKLOAD ARG
--
-- get, put, mix ARG = size of the pre-filled key pool: keys k0 .. k<ARG-1>, chosen at random
-- post          ARG = key prefix: each thread creates <prefix>t<thread>n0, n1, ... in order
-- delete        ARG = the prefix a post run used: deletes the same keys in the same order
-- history       ARG = the key whose history every request reads
--
-- done() prints "BENCH_RESULT {json}" after wrk's own report; benchmarks/wrk.py parses it.

local VALUE = string.rep("0123456789", 10) -- 100 bytes, text, so history shows it as a string
local WRITE_HEADERS = { ["Content-Type"] = "application/octet-stream" }
local READ_SHARE = 0.9 -- of the mix workload

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count) -- becomes a global of that thread's Lua state
end

local function random_key(pool_size)
  return "/k" .. math.random(0, pool_size - 1)
end

local function get(pool_size)
  return wrk.format("GET", random_key(pool_size))
end

local function put(pool_size)
  return wrk.format("PUT", random_key(pool_size), WRITE_HEADERS, VALUE)
end

-- Each thread walks its own sequence of keys, so a delete run can retrace a post run.
local issued = 0

local function next_sequential_key(prefix)
  local key = "/" .. prefix .. "t" .. thread_id .. "n" .. issued
  issued = issued + 1
  return key
end

local GENERATORS = {
  get = get,
  put = put,
  mix = function(pool_size)
    if math.random() < READ_SHARE then
      return get(pool_size)
    end
    return put(pool_size)
  end,
  post = function(prefix)
    return wrk.format("POST", next_sequential_key(prefix), WRITE_HEADERS, VALUE)
  end,
  delete = function(prefix)
    return wrk.format("DELETE", next_sequential_key(prefix))
  end,
  history = function(key)
    return wrk.format("GET", "/" .. key .. "/history")
  end,
}

local generate
local argument

function init(args)
  generate = GENERATORS[args[1]]
  if generate == nil then
    error("unknown workload " .. tostring(args[1]))
  end
  argument = args[2]
  if args[1] == "get" or args[1] == "put" or args[1] == "mix" then
    argument = tonumber(argument)
  end
  math.randomseed(os.time() * 1000 + thread_id)
end

function request()
  return generate(argument)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"p50_us":%d,"p99_us":%d,"max_us":%d,"status_errors":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.max, errors.status,
    errors.connect, errors.read, errors.write, errors.timeout
  ))
end
