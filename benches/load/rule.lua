-- wrk script for workload (a): POST /rule with JSON bodies, alternating a reading that
-- matches the rule (zone A, 31.5) and one that does not (zone B, 22.0).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local bodies = {
  '{"device":"sensor-1","zone":"A","temp":31.5}',
  '{"device":"sensor-2","zone":"B","temp":22.0}',
}
local n = 0

request = function()
  n = n + 1
  return wrk.format(nil, "/rule", nil, bodies[(n % 2) + 1])
end
