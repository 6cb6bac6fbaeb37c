// The staff upload page: uploads go to the REST API with the session; the list is
// kept live over the WebSocket feed. The feed is at-most-once, so every (re)connect
// starts from a snapshot and each event carries the job's sequence number: anything
// not newer than what we hold is dropped.
(function () {
  "use strict";

  const jobs = new Map(); // id -> job payload (with .seq)
  const list = document.getElementById("jobs");
  const empty = document.getElementById("empty");
  const connection = document.getElementById("connection");
  const fileInput = document.getElementById("file-input");
  const dropZone = document.getElementById("drop-zone");
  const language = document.getElementById("language");
  const heartbeatMs = (window.KIKI && window.KIKI.heartbeatSeconds || 25) * 1000;

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clock(seconds) {
    const s = Math.max(0, Math.floor(seconds || 0));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
  }

  function statusLine(job) {
    if (job.status === "queued") {
      return job.queue_position ? `queued · #${job.queue_position} in line` : "queued";
    }
    if (job.status === "running") {
      if (job.source === "live") return "dictating…";
      if (job.duration && job.processed_seconds) {
        const pct = Math.min(100, Math.round((100 * job.processed_seconds) / job.duration));
        return `transcribing · ${pct}%`;
      }
      return "transcribing…";
    }
    if (job.status === "succeeded") {
      const took = job.processing_seconds ? ` in ${job.processing_seconds.toFixed(1)} s` : "";
      return `done · ${clock(job.duration)} of audio${took}`;
    }
    if (job.status === "failed") return "failed";
    return job.status;
  }

  function renderJob(job) {
    const item = el("li", {
      class: `job status-${job.status}`,
      "data-job-id": job.id,
      "data-status": job.status,
      "data-seq": job.seq,
    });
    item.append(
      el("div", { class: "job-head" },
        el("span", { class: "name" }, job.original_filename || job.id),
        el("span", { class: `badge ${job.status}`, "data-role": "status" }, job.status),
        el("span", { class: "hint", "data-role": "status-line" }, statusLine(job))
      )
    );
    if (job.status === "running" && job.duration) {
      const progress = el("progress", { max: job.duration, value: job.processed_seconds || 0 });
      item.append(progress);
    }
    if (job.error) {
      item.append(el("p", { class: "error", "data-role": "error" }, `${job.error.message} (${job.error.code})`));
    }
    if (job.segments && job.segments.length) {
      const transcript = el("div", { class: "transcript", "data-role": "transcript" });
      for (const segment of job.segments) {
        transcript.append(
          el("p", { class: "segment" },
            el("time", {}, `${clock(segment.start)}–${clock(segment.end)}`), " ", segment.text)
        );
      }
      item.append(transcript);
    }
    const actions = el("div", { class: "actions" });
    // A live session's audio is stored when it ends.
    const audioStored = job.source !== "live" || job.status === "succeeded";
    if (job.links && job.links.audio && audioStored) {
      actions.append(el("audio", { controls: true, preload: "none", src: job.links.audio }));
    }
    if (job.status === "succeeded") {
      for (const fmt of ["txt", "srt", "vtt", "json"]) {
        actions.append(el("a", { href: job.links[fmt], class: "download", download: "" }, fmt));
      }
    }
    if (job.status === "failed" || job.status === "cancelled") {
      const retry = el("button", { type: "button", class: "retry" }, "Retry");
      retry.addEventListener("click", () => retryJob(job, retry));
      actions.append(retry);
    }
    item.append(actions);
    return item;
  }

  // Only the job that changed is redrawn, so other rows (and their audio players)
  // are left alone.
  function render(id) {
    if (id === undefined) {
      const ordered = [...jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
      list.replaceChildren(...ordered.map(renderJob));
    } else {
      const node = list.querySelector(`[data-job-id="${CSS.escape(id)}"]`);
      const job = jobs.get(id);
      if (!job) {
        if (node) node.remove();
      } else if (node) {
        node.replaceWith(renderJob(job));
      } else {
        const fresh = renderJob(job);
        const after = [...list.children].find((child) => {
          const other = jobs.get(child.dataset.jobId);
          return other && other.created_at < job.created_at;
        });
        list.insertBefore(fresh, after || null);
      }
    }
    empty.hidden = jobs.size > 0;
  }

  function accept(job, seq) {
    const known = jobs.get(job.id);
    let incoming = seq;
    if (incoming === undefined) incoming = job.seq !== undefined ? job.seq : job.event_seq;
    if (known && known.seq !== undefined && incoming !== undefined && incoming <= known.seq) {
      return false; // stale or duplicate: we already hold this or newer
    }
    jobs.set(job.id, Object.assign({}, job, { seq: incoming }));
    return true;
  }

  // --- WebSocket feed with reconnects -----------------------------------------------
  let socket = null;
  let retryDelay = 500;
  let watchdog = null;

  function setConnection(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  function armWatchdog() {
    clearTimeout(watchdog);
    // Two missed heartbeats: the connection is dead even if the socket says open.
    watchdog = setTimeout(() => socket && socket.close(), 2 * heartbeatMs + 5000);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/transcriptions/`);
    setConnection("connecting", "connecting…");
    socket.addEventListener("open", () => {
      retryDelay = 500;
      armWatchdog();
    });
    socket.addEventListener("message", (message) => {
      armWatchdog();
      const data = JSON.parse(message.data);
      if (data.type === "snapshot") {
        for (const job of data.jobs) accept(job);
        setConnection("live", "live");
        render();
      } else if (data.type === "event") {
        if (accept(data.job, data.seq)) render(data.job.id);
      }
    });
    socket.addEventListener("close", (event) => {
      clearTimeout(watchdog);
      if (event.code === 4403) {
        setConnection("closed", "signed out: reload the page to sign in again");
        return;
      }
      setConnection("reconnecting", "reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    });
  }

  // --- Uploads and retries ----------------------------------------------------------
  async function upload(file) {
    const body = new FormData();
    body.append("file", file, file.name);
    if (language.value) body.append("language", language.value);
    const placeholder = {
      id: `upload-${Math.random().toString(36).slice(2)}`,
      original_filename: file.name,
      status: "uploading",
      created_at: new Date().toISOString(),
    };
    jobs.set(placeholder.id, placeholder);
    render(placeholder.id);
    try {
      const response = await fetch("/api/v1/transcriptions", {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      });
      const data = await response.json().catch(() => ({}));
      if (response.status === 202) {
        jobs.delete(placeholder.id);
        render(placeholder.id);
        accept(data);
        render(data.id);
        return;
      }
      const error = (data && data.error) || { code: `http_${response.status}`, message: response.statusText };
      Object.assign(placeholder, { status: "rejected", error });
    } catch (err) {
      Object.assign(placeholder, {
        status: "rejected", error: { code: "network", message: "The upload did not reach the server." },
      });
    }
    render(placeholder.id);
  }

  async function retryJob(job, button) {
    button.disabled = true;
    const response = await fetch(job.links.retry, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 202) {
      if (accept(data)) render(data.id);
    } else {
      button.disabled = false;
      alert((data.error && data.error.message) || "Retry failed.");
    }
  }

  function uploadAll(files) {
    for (const file of files) upload(file);
  }

  fileInput.addEventListener("change", () => {
    uploadAll(fileInput.files);
    fileInput.value = "";
  });
  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("over");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("over");
    uploadAll(event.dataTransfer.files);
  });

  // A dictation session (dictation.js) hands over the job it became, which the feed
  // also brings: whichever comes second is dropped by its sequence number.
  document.addEventListener("kiki:job", (event) => {
    if (accept(event.detail)) render(event.detail.id);
  });

  connect();
})();
