-- Argo CD health check for multiarch.dev/MultiArchBuild (README "Health, retention and alerts").
-- Put it in argocd-cm under resource.customizations.health.multiarch.dev_MultiArchBuild.
--   Succeeded True                        -> Healthy     (status.image is final)
--   Succeeded False (failed or cancelled) -> Degraded    (it never produces an image, never resumes)
--   anything else (Waiting, Pending, Building, Assembling, no status yet,
--   a status older than the spec)          -> Progressing
local hs = { status = "Progressing", message = "Waiting for the controller" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.message = "The controller has not seen generation " .. tostring(generation) .. " yet"
  return hs
end
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Succeeded" then
      local message = (condition.reason or "") .. ": " .. (condition.message or "")
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.status == "False" then
        hs.status = "Degraded"
      end
      hs.message = message
      return hs
    end
  end
end
if obj.status.phase ~= nil then
  hs.message = obj.status.phase
end
return hs
