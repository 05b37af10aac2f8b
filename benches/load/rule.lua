-- wrk script for workload (a): POST /rule with JSON bodies, alternating a reading that
-- matches the rule (zone A, 31.5) and one that does not (zone B, 22.0). Both requests are
-- formatted once, at start: the load generator shares the agent's two cores, so its own
-- cost per request is kept as small as wrk allows.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local bodies = {
  '{"device":"sensor-1","zone":"A","temp":31.5}',
  '{"device":"sensor-2","zone":"B","temp":22.0}',
}
local requests = {}
local n = 0

init = function(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format(nil, "/rule", nil, body)
  end
end

request = function()
  n = n + 1
  return requests[(n % 2) + 1]
end
