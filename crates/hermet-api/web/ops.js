// The operations page (/ops): polls GET /v1/ops/status with a server API key and /metrics
// (public) every 2 s and shows them. Plain script, no framework, no build step: the server's
// Content-Security-Policy allows scripts and connections to this origin only, and every figure
// is written with textContent (never as HTML), so nothing the server sends can run as script.
//
// The key lives in sessionStorage (this tab only, gone when it closes). A 401/403 forgets it
// and shows the key form with the server's message; a network failure keeps the last figures
// (greyed) and keeps retrying.
"use strict";

(function () {
  const KEY_STORAGE = "hermet.ops_key";
  const POLL_MS = 2000;
  // Gathering the status may wait on a Kafka that does not answer (about 10 s per request).
  const STATUS_TIMEOUT_MS = 35000;
  const METRICS_TIMEOUT_MS = 10000;
  const HTTP_SECONDS = "hermet_http_request_duration_seconds";
  // The page's own polls and other monitoring are not the API's traffic.
  const MONITORING_ROUTES = new Set(["/metrics", "/v1/ops/status", "/healthz", "/readyz"]);
  // A WebSocket's "request" lasts as long as the connection: not a latency.
  const NOT_LATENCY_ROUTES = new Set(["/v1/ws"]);

  const $ = (id) => document.getElementById(id);

  let timer = null;
  let generation = 0; // a key change abandons the polls of the key before
  let lastMetrics = null; // {t, count, buckets: Map(le -> cumulative count)}
  let lastOkTs = 0;

  // ---- formatting ---------------------------------------------------------------------------

  const intFmt = new Intl.NumberFormat("en");

  function fmtInt(n) {
    return Number.isFinite(n) ? intFmt.format(n) : "–";
  }

  function fmtBytes(n) {
    if (!Number.isFinite(n)) return "–";
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let v = n;
    let unit = "";
    for (const u of units) {
      if (Math.abs(v) < 1024) break;
      v /= 1024;
      unit = u;
    }
    return unit === "" ? `${fmtInt(n)} B` : `${v.toFixed(1)} ${unit}`;
  }

  function fmtPercent(rate) {
    const p = rate * 100;
    let text = p.toFixed(2);
    // Not all consistent must not read as 100.00 %.
    if (rate < 1 && text === "100.00") text = p.toFixed(6);
    return `${text} %`;
  }

  function fmtMs(seconds) {
    const ms = seconds * 1000;
    if (ms < 10) return `${ms.toFixed(2)} ms`;
    if (ms < 100) return `${ms.toFixed(1)} ms`;
    return `${Math.round(ms)} ms`;
  }

  function fmtAgo(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function fmtTime(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  // ---- DOM helpers ----------------------------------------------------------------------------

  function setValue(id, value, text) {
    const el = $(id);
    el.dataset.value = value === null || value === undefined ? "" : String(value);
    el.textContent = text;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function emptyRow(tbody, columns, text) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, text);
    td.colSpan = columns;
    tbody.appendChild(tr);
  }

  function showError(text) {
    const el = $("ops-error");
    el.textContent = text;
    el.hidden = !text;
  }

  // `stale` (greyed) and data-state="unreachable" while the last refresh failed, "live" after
  // one that worked.
  function setStale(stale) {
    $("ops-status").classList.toggle("stale", stale);
    $("ops-status").dataset.state = stale ? "unreachable" : "live";
  }

  // ---- the status document -----------------------------------------------------------------

  function renderStatus(s) {
    $("ops-mode").textContent = s.sync_mode || "–";

    const slot = s.slot;
    if (slot && Number.isFinite(slot.lag_bytes)) {
      setValue("ops-slot-lag", slot.lag_bytes, fmtBytes(slot.lag_bytes));
    } else if (slot) {
      setValue("ops-slot-lag", null, "unknown");
    } else {
      setValue("ops-slot-lag", null, "no slot");
    }
    $("ops-slot-detail").textContent = slot
      ? `${slot.slot}, ${slot.active ? "active" : "inactive"}`
      : "the relay has not run, or not in cdc mode";

    const groups = Array.isArray(s.groups) ? s.groups : [];
    if (s.kafka_error) {
      setValue("ops-group-lag", null, "unknown (Kafka unavailable)");
    } else {
      const lag = groups.reduce((sum, g) => sum + (Number(g.lag) || 0), 0);
      setValue("ops-group-lag", lag, `${fmtInt(lag)} records`);
    }

    setValue("ops-outbox", s.outbox_pending, `${fmtInt(s.outbox_pending)} rows`);

    const buried = Number(s.outbox_dead) || 0;
    const dlq = Number.isFinite(s.dlq_records) ? s.dlq_records : 0;
    const dlqText = Number.isFinite(s.dlq_records)
      ? `${fmtInt(s.dlq_records)} in ${s.dlq_topic}`
      : `${s.dlq_topic} ${s.kafka_error ? "unknown" : "absent"}`;
    setValue("ops-dead", buried + dlq, fmtInt(buried + dlq));
    $("ops-dead-detail").textContent = `${fmtInt(buried)} outbox rows set aside; ${dlqText}`;
    $("ops-dead").classList.toggle("bad", buried + dlq > 0);

    const a = s.last_audit;
    if (a) {
      $("ops-consistency").textContent = fmtPercent(Number(a.consistency_rate));
      $("ops-consistency").classList.toggle("bad", Number(a.findings) > 0);
      const when = Number.isFinite(a.finished_at_ms) ? ` (${fmtAgo(a.finished_at_ms)})` : "";
      $("ops-audit").textContent =
        `${a.finished_at}${when}, ${a.source}: ${fmtInt(a.findings)} findings in ` +
        `${fmtInt(a.audited_buckets)}/${fmtInt(a.buckets)} buckets, ` +
        `${fmtInt(a.expected_rows)} rows${a.repaired ? ", repaired" : ""}`;
    } else {
      $("ops-consistency").textContent = "no audit yet";
      $("ops-consistency").classList.remove("bad");
      $("ops-audit").textContent = "none recorded (hermet admin audit, or audit.interval_secs)";
    }

    renderWarnings(s);
    renderGroups(groups, s.kafka_error);
    renderWatermarks(Array.isArray(s.watermarks) ? s.watermarks : []);
    renderSlots(s);
  }

  function renderWarnings(s) {
    const ul = $("ops-warnings");
    ul.replaceChildren();
    const all = Array.isArray(s.warnings) ? s.warnings.slice() : [];
    if (s.kafka_error) all.push(`Kafka is unavailable: ${s.kafka_error}`);
    for (const w of all) {
      const li = document.createElement("li");
      li.textContent = w;
      ul.appendChild(li);
    }
    if (all.length === 0) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "none";
      ul.appendChild(li);
    }
  }

  function renderGroups(groups, kafkaError) {
    const tbody = $("ops-groups").tBodies[0];
    tbody.replaceChildren();
    for (const g of groups) {
      const parts = Array.isArray(g.partitions) ? g.partitions : [];
      if (parts.length === 0) {
        emptyRow(tbody, 7, `${g.group}: no topics yet (the relay has not created them)`);
        continue;
      }
      for (const p of parts) {
        const tr = document.createElement("tr");
        tr.dataset.group = g.group;
        tr.dataset.partition = String(p.partition);
        tr.dataset.topic = p.topic;
        cell(tr, g.group);
        cell(tr, fmtInt(g.members), "num");
        cell(tr, p.topic);
        cell(tr, String(p.partition), "num");
        cell(tr, p.committed === null || p.committed === undefined ? "–" : fmtInt(p.committed), "num");
        cell(tr, fmtInt(p.high), "num");
        const lag = cell(tr, fmtInt(p.lag), "num lag");
        lag.dataset.value = String(p.lag);
        if (p.lag > 0) lag.classList.add("behind");
        tbody.appendChild(tr);
      }
    }
    if (groups.length === 0) {
      emptyRow(tbody, 7, kafkaError ? "Kafka is unavailable" : "no consumer groups");
    }
  }

  function renderWatermarks(watermarks) {
    const tbody = $("ops-watermarks").tBodies[0];
    tbody.replaceChildren();
    for (const w of watermarks) {
      const tr = document.createElement("tr");
      tr.dataset.projector = w.projector;
      cell(tr, w.projector);
      cell(tr, fmtInt(w.partitions), "num");
      cell(tr, `${w.min_applied_lsn} … ${w.max_applied_lsn}`);
      const behind = cell(tr, fmtBytes(w.behind_bytes), "num");
      behind.dataset.value = String(w.behind_bytes);
      tbody.appendChild(tr);
    }
    if (watermarks.length === 0) emptyRow(tbody, 4, "no watermarks (no projector has applied anything)");
  }

  function renderSlots(s) {
    $("ops-wal").textContent = s.wal_lsn || "–";
    const tbody = $("ops-slots").tBodies[0];
    tbody.replaceChildren();
    const slots = (s.slot ? [s.slot] : []).concat(Array.isArray(s.other_slots) ? s.other_slots : []);
    for (const sl of slots) {
      const tr = document.createElement("tr");
      tr.dataset.slot = sl.slot;
      cell(tr, sl.slot);
      const state = (sl.active ? "active" : "inactive") + (sl.wal_status ? ` (${sl.wal_status})` : "");
      const st = cell(tr, state);
      if (!sl.active) st.classList.add("bad");
      cell(tr, Number.isFinite(sl.lag_bytes) ? fmtBytes(sl.lag_bytes) : "–", "num");
      cell(tr, Number.isFinite(sl.retained_wal_bytes) ? fmtBytes(sl.retained_wal_bytes) : "–", "num");
      tbody.appendChild(tr);
    }
    if (slots.length === 0) emptyRow(tbody, 4, "none (the relay has not run, or not in cdc mode)");
  }

  // ---- /metrics: request rate and latency ------------------------------------------------------

  // One sample line: `name{a="x",b="y"} value [timestamp]`.
  function parseLine(line) {
    const brace = line.indexOf("{");
    const space = line.lastIndexOf("}") >= 0 ? line.indexOf(" ", line.lastIndexOf("}")) : line.indexOf(" ");
    if (space < 0) return null;
    const name = brace >= 0 && brace < space ? line.slice(0, brace) : line.slice(0, space);
    const labels = {};
    if (brace >= 0 && brace < space) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      const body = line.slice(brace + 1, line.lastIndexOf("}"));
      let m;
      while ((m = re.exec(body)) !== null) labels[m[1]] = m[2].replace(/\\(.)/g, "$1");
    }
    const value = parseFloat(line.slice(space + 1).trim().split(/\s+/)[0]);
    return { name, labels, value };
  }

  function sampleMetrics(text) {
    let count = 0;
    const buckets = new Map();
    for (const line of text.split("\n")) {
      if (line === "" || line.startsWith("#") || !line.startsWith(HTTP_SECONDS)) continue;
      const s = parseLine(line);
      if (!s || !Number.isFinite(s.value)) continue;
      const route = s.labels.route || "";
      if (MONITORING_ROUTES.has(route)) continue;
      if (s.name === `${HTTP_SECONDS}_count`) {
        count += s.value;
      } else if (s.name === `${HTTP_SECONDS}_bucket` && !NOT_LATENCY_ROUTES.has(route)) {
        const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
        if (!Number.isNaN(le)) buckets.set(le, (buckets.get(le) || 0) + s.value);
      }
    }
    return { t: performance.now(), count, buckets };
  }

  // Like PromQL's histogram_quantile: linear within the bucket the rank falls in.
  function quantile(q, deltas) {
    const bounds = [...deltas.keys()].sort((a, b) => a - b);
    if (bounds.length === 0) return null;
    const total = deltas.get(bounds[bounds.length - 1]);
    if (!(total > 0)) return null;
    const rank = q * total;
    let lower = 0;
    let below = 0;
    for (const upper of bounds) {
      const cum = deltas.get(upper);
      if (cum >= rank) {
        if (upper === Infinity) return lower; // beyond the largest bound: say that bound
        const inBucket = cum - below;
        return inBucket > 0 ? lower + ((upper - lower) * (rank - below)) / inBucket : upper;
      }
      lower = upper;
      below = cum;
    }
    return lower;
  }

  function renderMetrics(now) {
    const prev = lastMetrics;
    lastMetrics = now;
    if (!prev) {
      $("ops-requests").textContent = "measuring…";
      $("ops-latency").textContent = "measuring…";
      return;
    }
    const dt = (now.t - prev.t) / 1000;
    const dCount = now.count - prev.count;
    if (dt <= 0 || dCount < 0) {
      // The process restarted (counters went back): measure from here.
      $("ops-requests").textContent = "measuring…";
      $("ops-latency").textContent = "measuring…";
      return;
    }
    const rate = dCount / dt;
    $("ops-requests").textContent = `${rate < 10 ? rate.toFixed(2) : Math.round(rate)} req/s`;
    const deltas = new Map();
    for (const [le, cum] of now.buckets) {
      const d = cum - (prev.buckets.get(le) || 0);
      if (d >= 0) deltas.set(le, d);
    }
    const p50 = quantile(0.5, deltas);
    const p99 = quantile(0.99, deltas);
    $("ops-latency").textContent =
      p50 === null ? "no requests" : `p50 ${fmtMs(p50)} / p99 ${fmtMs(p99)}`;
  }

  // ---- polling --------------------------------------------------------------------------------

  function timeoutSignal(ms) {
    if (typeof AbortSignal !== "undefined" && typeof AbortSignal.timeout === "function") {
      return AbortSignal.timeout(ms);
    }
    const c = new AbortController();
    setTimeout(() => c.abort(), ms);
    return c.signal;
  }

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && typeof body.error.message === "string") return body.error.message;
    } catch (_) {
      // Not our JSON error: the status says enough.
    }
    return `HTTP ${resp.status}`;
  }

  async function pollStatus(key, gen) {
    let resp;
    try {
      resp = await fetch("/v1/ops/status", {
        headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
        cache: "no-store",
        signal: timeoutSignal(STATUS_TIMEOUT_MS),
      });
    } catch (_) {
      if (gen !== generation) return "abandoned";
      unreachable("The server is unreachable");
      return "retry";
    }
    if (gen !== generation) return "abandoned";
    if (resp.status === 401 || resp.status === 403) {
      const msg = await errorMessage(resp);
      refused(`The key was refused: ${msg}`);
      return "refused";
    }
    if (!resp.ok) {
      unreachable(`The status is unavailable: ${await errorMessage(resp)}`);
      return "retry";
    }
    let s;
    try {
      s = await resp.json();
    } catch (_) {
      unreachable("The server answered something that is not the status document");
      return "retry";
    }
    if (gen !== generation) return "abandoned";
    renderStatus(s);
    lastOkTs = Date.now();
    $("ops-updated").dataset.ts = String(lastOkTs);
    showError("");
    setStale(false);
    $("ops-key-form").hidden = true;
    $("ops-status").hidden = false;
    renderUpdated();
    return "ok";
  }

  async function pollMetrics(gen) {
    try {
      const resp = await fetch("/metrics", { cache: "no-store", signal: timeoutSignal(METRICS_TIMEOUT_MS) });
      if (gen !== generation) return;
      if (!resp.ok) {
        lastMetrics = null;
        $("ops-requests").textContent = "metrics unavailable";
        $("ops-latency").textContent = "metrics unavailable";
        return;
      }
      const text = await resp.text();
      if (gen !== generation) return;
      renderMetrics(sampleMetrics(text));
    } catch (_) {
      // The status poll reports the server unreachable; the figures stay greyed until it is back.
      lastMetrics = null;
    }
  }

  function renderUpdated() {
    const el = $("ops-updated");
    if (!lastOkTs) {
      el.textContent = "not updated yet";
      return;
    }
    const stale = $("ops-status").classList.contains("stale");
    el.textContent = `${stale ? "last updated" : "updated"} ${fmtTime(lastOkTs)} (${fmtAgo(lastOkTs)})`;
  }

  function unreachable(why) {
    showError(`${why}. Showing the last figures, greyed; retrying every ${POLL_MS / 1000} s.`);
    setStale(true);
    renderUpdated();
  }

  function refused(message) {
    stop();
    sessionStorage.removeItem(KEY_STORAGE);
    lastMetrics = null;
    $("ops-status").hidden = true;
    $("ops-key-form").hidden = false;
    showError(message);
    $("ops-key").focus();
  }

  function stop() {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  async function tick(key, gen) {
    const [result] = await Promise.all([pollStatus(key, gen), pollMetrics(gen)]);
    if (gen !== generation || result === "refused" || result === "abandoned") return;
    timer = setTimeout(() => tick(key, gen), POLL_MS);
  }

  function start(key) {
    stop();
    lastMetrics = null;
    tick(key, generation);
  }

  // ---- wiring ---------------------------------------------------------------------------------

  function init() {
    const form = $("ops-key-form");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("ops-key").value.trim();
      if (!key) {
        showError("Enter a server API key.");
        return;
      }
      sessionStorage.setItem(KEY_STORAGE, key);
      $("ops-key").value = "";
      showError("");
      start(key);
    });
    $("ops-forget").addEventListener("click", () => {
      stop();
      sessionStorage.removeItem(KEY_STORAGE);
      lastOkTs = 0;
      $("ops-status").hidden = true;
      form.hidden = false;
      showError("");
      $("ops-key").focus();
    });
    // The "n s ago" texts move on between refreshes.
    setInterval(renderUpdated, 1000);

    // The page ships the button disabled so the form can't be sent before this handler is on.
    $("ops-key-submit").disabled = false;

    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) start(saved);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
