// "Vandaag": keeps the numbers of today's activities current without reloading the page.
// Polls /admin/today.json (same origin, the coordinator's session cookie); a failed poll
// leaves the numbers as they were and tries again at the next interval.
const table = document.getElementById("today-table");

async function refresh() {
  const response = await fetch(table.dataset.pollUrl, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) return;
  const data = await response.json();
  for (const activity of data.activities) {
    const row = table.querySelector(`tr[data-occurrence="${CSS.escape(activity.id)}"]`);
    if (!row) continue;
    for (const field of ["enrolled", "present", "earlier", "guests"]) {
      const cell = row.querySelector(`[data-field="${field}"]`);
      const text = String(activity[field]);
      if (cell && cell.textContent !== text) cell.textContent = text;
    }
  }
  table.dataset.updated = String(data.at);
}

if (table) {
  const every = Number(table.dataset.pollMs) || 5000;
  setInterval(() => refresh().catch(() => {}), every);
}
