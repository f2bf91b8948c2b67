// Goodhart's pages work without this script. It adds: live run pages (server-sent events move
// the status and progress and re-fetch the charts, no reload), live sweep pages while runs
// train, legend toggling, instant tooltips from the charts' <title>s, auto-submitting option
// forms and the live "N runs" of the sweep form.
"use strict";

(function () {
  const body = document.body;

  // --- Charts: replace a figure's SVG with a fresh one from the server.
  async function refreshChart(figure) {
    const src = figure.dataset.src;
    if (!src) return;
    const response = await fetch(src, { cache: "no-store" });
    if (!response.ok) return;
    const text = await response.text();
    const holder = figure.querySelector(".chart-svg");
    if (!holder) return;
    holder.innerHTML = text;
    applyHidden(holder);
    figure.dataset.refreshed = String(Number(figure.dataset.refreshed || "0") + 1);
  }

  function refreshAll() {
    return Promise.all(Array.from(document.querySelectorAll("figure[data-src]")).map(refreshChart));
  }

  // At most one refresh in flight, and at most one per `gap` ms.
  function throttled(fn, gap) {
    let running = false, again = false, last = 0;
    return async function run() {
      if (running) { again = true; return; }
      const wait = Math.max(0, last + gap - Date.now());
      running = true;
      if (wait) await new Promise((r) => setTimeout(r, wait));
      try { await fn(); } finally {
        last = Date.now();
        running = false;
        if (again) { again = false; run(); }
      }
    };
  }

  // --- Run page: follow the run over SSE.
  if (body.dataset.page === "run" && body.dataset.live) {
    const id = body.dataset.runId;
    const total = Number(body.dataset.total || "0");
    const status = document.getElementById("run-status");
    const progress = document.getElementById("run-progress");
    const text = document.getElementById("progress-text");
    const note = document.getElementById("live-note");
    const refresh = throttled(refreshAll, 1000);
    const source = new EventSource("/api/runs/" + id + "/events");
    let totalSteps = total;
    let asking = false;
    let first = null;
    function duration(seconds) {
      const s = Math.round(seconds);
      if (s < 60) return s + "s";
      if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
      return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    }
    // A run that had not started when the page was drawn learns its total with its first steps.
    function learnTotal() {
      if (totalSteps || asking) return;
      asking = true;
      fetch("/api/runs/" + id, { cache: "no-store" })
        .then((r) => r.json())
        .then((run) => { totalSteps = run.total_steps || 0; })
        .catch(() => {})
        .finally(() => { asking = false; });
    }
    source.addEventListener("metrics", (event) => {
      const step = Number(event.lastEventId);
      learnTotal();
      if (totalSteps > 0 && progress) {
        progress.value = Math.round((100 * step) / totalSteps);
      }
      // ETA from the pace seen on this page.
      const now = Date.now();
      if (!first) first = { step, now };
      let eta = "";
      if (totalSteps && step > first.step) {
        const left = ((now - first.now) / (step - first.step)) * (totalSteps - step) / 1000;
        eta = " · ETA " + duration(left);
      }
      if (text) text.textContent = "step " + step + (totalSteps ? " of " + totalSteps : "") + eta;
      refresh();
    });
    source.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      if (status) {
        status.textContent = data.status;
        status.className = "status status-" + data.status;
      }
      body.dataset.status = data.status;
      if (["finished", "failed", "cancelled"].includes(data.status)) {
        source.close();
        refresh();
        if (data.status === "finished" && progress) progress.value = 100;
        if (note) note.textContent = "The run is " + data.status + ". Reload for its checkpoints and summary.";
      }
    });
    source.addEventListener("checkpoint", (event) => {
      if (note) note.textContent = "Checkpoint at step " + JSON.parse(event.data).step + " saved; reload to download it.";
    });
  }

  // --- Sweep and compare pages: re-draw while runs train.
  if (body.dataset.page === "compare" && body.dataset.live) {
    setInterval(refreshAll, 5000);
  }

  // --- Legend toggling: hide a run's lines, bands, markers and table row.
  const hidden = new Set();
  function applyHidden(root) {
    root.querySelectorAll("[data-key]").forEach((el) => {
      el.classList.toggle("hidden-series", hidden.has(el.dataset.key));
    });
  }
  document.querySelectorAll("input[data-toggle-key]").forEach((box) => {
    box.addEventListener("change", () => {
      const key = box.dataset.toggleKey;
      if (box.checked) hidden.delete(key); else hidden.add(key);
      document.querySelectorAll('[data-key="' + CSS.escape(key) + '"]').forEach((el) => {
        el.classList.toggle("hidden-series", hidden.has(key));
      });
    });
  });

  // --- Tooltips: show the hovered element's <title> at once, next to the pointer.
  const tip = document.createElement("div");
  tip.className = "tooltip";
  tip.setAttribute("role", "tooltip");
  tip.hidden = true;
  body.appendChild(tip);
  document.addEventListener("mousemove", (event) => {
    const target = event.target.closest && event.target.closest("svg.chart .hover, svg.chart .marker, svg.chart .run-line");
    const title = target && target.querySelector(":scope > title");
    if (!title) { tip.hidden = true; return; }
    tip.textContent = title.textContent;
    tip.hidden = false;
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = x + "px";
    tip.style.top = event.clientY + 14 + "px";
  });

  // --- Option forms submit themselves when a choice changes.
  document.querySelectorAll("[data-autosubmit]").forEach((el) => {
    el.addEventListener("change", () => el.form && el.form.requestSubmit());
  });

  // --- The sweep form counts its runs as the user types.
  const sweepForm = document.getElementById("sweep-form");
  const count = document.getElementById("run-count");
  if (sweepForm && count) {
    const update = throttled(async () => {
      const data = new URLSearchParams(new FormData(sweepForm));
      const response = await fetch("/sweeps/new/count", { method: "POST", body: data });
      if (!response.ok) return;
      const answer = await response.json();
      const over = answer.runs > answer.limit;
      count.textContent = answer.runs + " run" + (answer.runs === 1 ? "" : "s") +
        (over ? " — more than this server's limit of " + answer.limit : "");
      count.classList.toggle("field-error", over);
    }, 300);
    sweepForm.addEventListener("input", update);
    sweepForm.addEventListener("change", update);
    update();
  }
})();
