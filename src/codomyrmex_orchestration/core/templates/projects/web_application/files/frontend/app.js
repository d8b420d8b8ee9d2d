// Ask the backend for its health and show it.
fetch("/api/health")
  .then((response) => response.json())
  .then((body) => { document.getElementById("status").textContent = "backend: " + body.status; })
  .catch(() => { document.getElementById("status").textContent = "backend unreachable"; });
