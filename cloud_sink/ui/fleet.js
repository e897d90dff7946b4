"use strict";
(async () => {
  const r = await fetch("/api/fleet", { credentials: "same-origin" });
  const body = await r.json();
  const tbody = document.querySelector("#fleet tbody");
  for (const d of body.devices || []) {
    const tr = document.createElement("tr");
    for (const v of [d.device_id, d.last_heartbeat_utc, d.queue_depth, d.disk_used_pct == null ? "" : d.disk_used_pct + " %", d.last_upload_utc, d.model_version]) {
      const td = document.createElement("td");
      td.textContent = v == null ? "" : String(v);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
})();
