// The ops dashboard: the server pushes a full stats snapshot every few seconds over
// /ws/ops/; each one replaces what is shown, so a missed message costs nothing.
// The chart is drawn on a canvas by hand: no build step, no CDN (no internet here).
(function () {
  "use strict";

  const intervalMs = ((window.KIKI_OPS && window.KIKI_OPS.intervalSeconds) || 3) * 1000;
  const connection = document.getElementById("connection");
  const queueSamples = []; // [time ms, asr depth], kept for an hour
  let retryMs = 1000;

  function $(id) { return document.getElementById(id); }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    return td;
  }

  function row(...cells) {
    const tr = document.createElement("tr");
    cells.forEach((c) => tr.append(c));
    return tr;
  }

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function render(stats) {
    const q = stats.queues || {};
    $("q-asr").textContent = q.asr ?? "?";
    $("q-bots").textContent = q.bots ?? "?";
    $("q-default").textContent = q.default ?? "?";
    $("q-limit").textContent = `limit ${stats.max_queue_depth}`;
    $("jobs-per-min").textContent = fmt(stats.throughput.jobs_per_minute, 1);
    $("audio-per-min").textContent = fmt(stats.throughput.audio_minutes_per_minute, 2);
    $("rtf").textContent = `${fmt(stats.rtf.p50, 3)} / ${fmt(stats.rtf.p95, 3)}`;
    const admission = $("admission");
    admission.dataset.accepting = String(stats.accepting);
    admission.textContent = stats.accepting
      ? "Accepting new jobs."
      : "Queue full: new API and upload submissions get 503 busy.";

    const workers = $("workers");
    workers.replaceChildren();
    for (const w of stats.workers) {
      const running = w.running.map((j) => `${j.filename} (${j.id.slice(0, 8)})`).join(", ");
      const tr = row(
        cell(w.hostname),
        cell(w.queues.join(", ")),
        cell(w.concurrency, "num"),
        cell(w.last_seen_seconds === null ? "no heartbeat" : `${w.last_seen_seconds} s ago`),
        cell(running || "idle"),
      );
      tr.dataset.hostname = w.hostname;
      if (w.stale) tr.className = "stale";
      workers.append(tr);
    }
    if (!stats.workers.length) {
      const td = cell("no live workers", "hint");
      td.colSpan = 5;
      workers.append(row(td));
    }

    const states = $("states");
    states.replaceChildren();
    for (const [state, n] of Object.entries(stats.jobs)) {
      const tr = row(cell(state), cell(n, "num"));
      tr.dataset.state = state;
      states.append(tr);
    }
    const failures = $("failures");
    failures.replaceChildren();
    const codes = Object.entries(stats.failures_last_24h).sort((a, b) => b[1] - a[1]);
    for (const [code, n] of codes) failures.append(row(cell(code), cell(n, "num")));
    if (!codes.length) failures.append(row(cell("none", "hint")));

    const now = Date.parse(stats.time);
    queueSamples.push([now, q.asr || 0]);
    while (queueSamples.length && queueSamples[0][0] < now - 3600 * 1000) queueSamples.shift();
    draw(stats.history, now);
  }

  function draw(history, now) {
    const canvas = $("chart");
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, pad = 28;
    ctx.clearRect(0, 0, W, H);
    const start = now - 3600 * 1000;
    const x = (t) => pad + ((t - start) / (3600 * 1000)) * (W - 2 * pad);
    const series = [
      ["#2a6f4e", history.map((b) => [Date.parse(b.minute), b.jobs])],
      ["#b32d2e", history.map((b) => [Date.parse(b.minute), b.failed])],
      ["#2271b1", history.map((b) => [Date.parse(b.minute), b.audio_seconds / 60])],
      ["#dba617", queueSamples],
    ];
    let max = 1;
    for (const [, points] of series) for (const [, v] of points) max = Math.max(max, v);
    const y = (v) => H - pad - (v / max) * (H - 2 * pad);
    ctx.strokeStyle = "#dcdcde";
    ctx.fillStyle = "#646970";
    ctx.font = "11px system-ui, sans-serif";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      ctx.beginPath();
      ctx.moveTo(pad, y(v));
      ctx.lineTo(W - pad, y(v));
      ctx.stroke();
      ctx.fillText(v.toFixed(v < 10 ? 1 : 0), 2, y(v) + 4);
    }
    for (let m = 60; m >= 0; m -= 15) ctx.fillText(m ? `-${m} min` : "now", x(now - m * 60000) - 12, H - 8);
    for (const [color, points] of series) {
      if (!points.length) continue;
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
      ctx.stroke();
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/ops/`);
    let watchdog = null;
    const arm = () => {
      clearTimeout(watchdog);
      // Two missed snapshots: the connection is dead even if no close came.
      watchdog = setTimeout(() => socket.close(), 3 * intervalMs + 5000);
    };
    socket.onopen = () => { retryMs = 1000; arm(); };
    socket.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.type !== "stats") return;
      arm();
      connection.dataset.state = "live";
      connection.textContent = `live · updated ${new Date(data.stats.time).toLocaleTimeString()}`;
      render(data.stats);
    };
    socket.onclose = (event) => {
      clearTimeout(watchdog);
      if (event.code === 4403) {
        connection.dataset.state = "closed";
        connection.textContent = "not allowed: staff only";
        return;
      }
      connection.dataset.state = "reconnecting";
      connection.textContent = "reconnecting…";
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }

  connect();
})();
