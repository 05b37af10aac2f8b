-- wrk script for the hub's POST /api/v1/workflows/{name}/run (issue 4 budget): the token
-- comes from the environment (HUB_TOKEN), the workflow name from HUB_WORKFLOW.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("HUB_TOKEN")
local path = "/api/v1/workflows/" .. os.getenv("HUB_WORKFLOW") .. "/run"
local n = 0

request = function()
  n = n + 1
  return wrk.format(nil, path, nil, '{"n":' .. n .. ',"zone":"A","temp":31.5}')
end
