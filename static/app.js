// Goodhart's pages work without this script. It adds: live run pages (server-sent events move
// the status, progress, π_init's SFT, buttons and badges, and refresh the charts and tables, no
// reload), a live runs table, live sweep pages while runs train, legend toggles kept in the URL
// (the charts, tables and downloads follow), instant tooltips from the charts' <title>s,
// auto-submitting option forms, the New run form's method presets and in-place preview, and the
// live "N runs" of the sweep form.
"use strict";

(function () {
  const body = document.body;

  // --- A browser whose session ended (expired, signed out elsewhere) is answered with the
  // sign-in page or a 401: reload, so the page itself sends it to sign in, rather than swap the
  // sign-in page's HTML into this one. Answers null then.
  async function fetchFresh(url, options) {
    const response = await fetch(url, Object.assign({ cache: "no-store" }, options || {}));
    const toLogin = response.redirected && new URL(response.url).pathname === "/login";
    if (toLogin || response.status === 401) {
      location.reload();
      return null;
    }
    return response;
  }

  // --- Charts: replace a figure's SVG with a fresh one from the server.
  async function refreshChart(figure) {
    const src = figure.dataset.src;
    if (!src) return;
    const response = await fetchFresh(src);
    if (!response || !response.ok) return;
    const text = await response.text();
    const holder = figure.querySelector(".chart-svg");
    if (!holder) return;
    holder.innerHTML = text;
    figure.dataset.refreshed = String(Number(figure.dataset.refreshed || "0") + 1);
  }

  function refreshAll() {
    return Promise.all(Array.from(document.querySelectorAll("figure[data-src]")).map(refreshChart));
  }

  // --- Sections: the parts of a page marked data-live-section, fetched again and swapped in
  // place (tables, summaries, notes; charts inside them come along).
  async function refreshSections(url) {
    const response = await fetchFresh(url);
    if (!response || !response.ok) return false;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    document.querySelectorAll("[data-live-section][id]").forEach((old) => {
      const replacement = fresh.getElementById(old.id);
      if (replacement && replacement.innerHTML !== old.innerHTML) {
        old.innerHTML = replacement.innerHTML;
        old.dataset.refreshed = String(Number(old.dataset.refreshed || "0") + 1);
      }
    });
    return true;
  }

  // At most one refresh in flight, and at most one per `gap` ms.
  function throttled(fn, gap) {
    let running = false, again = false, last = 0;
    return async function run() {
      if (running) { again = true; return; }
      const wait = Math.max(0, last + gap - Date.now());
      running = true;
      if (wait) await new Promise((r) => setTimeout(r, wait));
      try { await fn(); } catch (e) { /* the next refresh tries again */ } finally {
        last = Date.now();
        running = false;
        if (again) { again = false; run(); }
      }
    };
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  const TERMINAL = ["finished", "failed", "cancelled"];

  // Buttons, forms and notes that only make sense in some statuses.
  function showForStatus(status) {
    document.querySelectorAll("[data-show-when]").forEach((el) => {
      el.hidden = !el.dataset.showWhen.split(" ").includes(status);
    });
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
    const refreshTables = throttled(() => refreshSections(location.href), 1500);
    const source = new EventSource("/api/runs/" + id + "/events");
    // The browser gives up on a stream answered with an error (a 401 once the session ended).
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) fetchFresh(location.href).catch(() => {});
    });
    let totalSteps = total;
    let lastStep = null;
    let asking = false;
    let first = null;
    // A run that had not started when the page was drawn learns its total with its first steps.
    function learnTotal() {
      if (totalSteps || asking) return;
      asking = true;
      fetchFresh("/api/runs/" + id)
        .then((r) => (r && r.ok ? r.json() : null))
        .then((run) => { if (run) totalSteps = run.total_steps || 0; })
        .catch(() => {})
        .finally(() => { asking = false; });
    }
    source.addEventListener("metrics", (event) => {
      const step = Number(event.lastEventId);
      // The overoptimization alarm fired (or a new peak cleared it): redraw its badge.
      const past = (JSON.parse(event.data).values || {})["overopt/past_peak"];
      const shown = !!document.querySelector("#run-overopt .past-peak");
      if (past !== undefined && past !== null && (past >= 0.5) !== shown) refreshTables();
      lastStep = step;
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
    source.addEventListener("sft", (event) => {
      const data = JSON.parse(event.data);
      const kl = data.values && data.values[body.dataset.sftKlName];
      const of = data.max_steps ? " of at most " + data.max_steps : "";
      if (text) {
        text.textContent = "building π_init: SFT step " + data.step + of +
          (kl !== undefined && kl !== null ? ", KL(behaviour ‖ π) " + Number(kl).toPrecision(3) + " nats" : "");
      }
      refresh();
    });
    source.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      if (status) {
        status.textContent = data.status;
        status.className = "status status-" + data.status;
      }
      const was = body.dataset.status;
      body.dataset.status = data.status;
      showForStatus(data.status);
      if (TERMINAL.includes(data.status)) {
        source.close();
        refresh();
        refreshTables();
        if (data.status === "finished" && progress) progress.value = 100;
        if (text) {
          const at = lastStep !== null ? lastStep : "";
          text.textContent = data.status + (at !== "" ? " at step " + at : "") + (totalSteps ? " of " + totalSteps : "");
        }
        if (note) note.textContent = "The run is " + data.status + ".";
      } else if (data.status === "queued" && text && was !== "queued") {
        // Back in the queue (its worker stopped or was lost): say what it waits for.
        text.textContent = text.dataset.queued || "waiting for a free trainer";
      }
    });
    source.addEventListener("checkpoint", (event) => {
      const data = JSON.parse(event.data);
      if (note) {
        note.textContent = data.deleted
          ? "Checkpoint at step " + data.step + " deleted: a later evaluation replaced it on the front."
          : "Checkpoint at step " + data.step + " saved.";
      }
      refreshTables();
    });
  }

  // --- Runs page: the table follows the queue (status, progress, new runs).
  const live = document.getElementById("runs-live");
  if (body.dataset.page === "runs" && live && live.dataset.src) {
    async function pollRuns() {
      if (document.hidden) return;
      const response = await fetchFresh(live.dataset.src);
      if (!response || !response.ok) return;
      const html = await response.text();
      if (html === live.dataset.last) return;
      const checked = new Set(Array.from(live.querySelectorAll("input[name=runs]:checked")).map((b) => b.value));
      const focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.id : null;
      live.innerHTML = html;
      live.dataset.last = html;
      live.dataset.refreshed = String(Number(live.dataset.refreshed || "0") + 1);
      live.querySelectorAll("input[name=runs]").forEach((b) => { b.checked = checked.has(b.value); });
      if (focused) { const again = document.getElementById(focused); if (again) again.focus(); }
    }
    setInterval(() => pollRuns().catch(() => {}), 2000);
  }

  // --- Sweep and compare pages: re-draw while runs train; toggles kept in the URL.
  if (body.dataset.page === "compare") {
    const redraw = throttled(() => refreshSections(location.href), 800);
    if (body.dataset.live) {
      setInterval(() => { if (!document.hidden) redraw(); }, 5000);
    }
    // A legend toggle hides or shows a run everywhere: chart (axes included), tables and
    // downloads are drawn again without it, and the URL remembers it.
    document.querySelectorAll("input[data-toggle-key]").forEach((box) => {
      box.addEventListener("change", () => {
        const hidden = Array.from(document.querySelectorAll("input[data-toggle-key]"))
          .filter((b) => !b.checked)
          .map((b) => b.dataset.toggleKey);
        const url = new URL(location.href);
        ["hide", "show", "legend"].forEach((k) => url.searchParams.delete(k));
        if (hidden.length) url.searchParams.set("hide", hidden.join(","));
        history.replaceState(null, "", url);
        redraw();
      });
    });
  }

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
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = event.clientY + 14 + "px";
  });

  // --- Option forms submit themselves when a choice changes.
  document.querySelectorAll("[data-autosubmit]").forEach((el) => {
    el.addEventListener("change", () => el.form && el.form.requestSubmit());
  });

  // --- New run: a method preset fills its fields; editing them by hand makes it "custom".
  const runForm = document.getElementById("run-form");
  const preset = document.getElementById("f-method");
  if (runForm && preset) {
    const field = (name) => document.getElementById("f-" + name);
    const setField = (name, value) => {
      const el = field(name);
      if (!el) return;
      if (el.type === "checkbox") el.checked = value === "true"; else el.value = value;
    };
    const current = (name) => {
      const el = field(name);
      if (!el) return "";
      return el.type === "checkbox" ? String(el.checked) : el.value;
    };
    preset.addEventListener("change", () => {
      const option = preset.selectedOptions[0];
      if (!option || !option.dataset.values) return;
      const values = JSON.parse(option.dataset.values);
      Object.keys(values).forEach((k) => setField(k, values[k]));
    });
    ["loss_type", "sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps"].forEach((name) => {
      const el = field(name);
      if (!el) return;
      el.addEventListener("change", () => {
        const option = preset.selectedOptions[0];
        if (!option || !option.dataset.values) return;
        const values = JSON.parse(option.dataset.values);
        const matches = Object.keys(values).every((k) => current(k) === values[k]);
        if (!matches) preset.value = "";
      });
    });
    // Preview in place, next to its button.
    const previewButton = document.getElementById("preview-button");
    const slot = document.getElementById("preview-slot");
    if (previewButton && slot) {
      previewButton.addEventListener("click", async (event) => {
        if (previewButton.dataset.plain) return;
        event.preventDefault();
        const data = new URLSearchParams(new FormData(runForm));
        data.set("action", "preview");
        const response = await fetchFresh("/runs/new", { method: "POST", body: data });
        if (!response) return;
        if (!response.ok) {
          // The errors go next to their fields: submit the form as without the script.
          previewButton.dataset.plain = "1";
          runForm.requestSubmit(previewButton);
          return;
        }
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("preview-slot");
        slot.innerHTML = fresh ? fresh.innerHTML : "";
        const preview = document.getElementById("preview");
        if (preview) preview.scrollIntoView({ block: "nearest" });
      });
    }
  }

  // --- The sweep form counts its runs as the user types.
  const sweepForm = document.getElementById("sweep-form");
  const count = document.getElementById("run-count");
  if (sweepForm && count) {
    const update = throttled(async () => {
      const data = new URLSearchParams(new FormData(sweepForm));
      const response = await fetchFresh("/sweeps/new/count", { method: "POST", body: data });
      if (!response || !response.ok) return;
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
