// Dictation on the staff page: the microphone (getUserMedia) goes through an
// AudioWorklet (pcm-worklet.js) that hands over PCM16 frames of about 100 ms, which
// are sent as they come over the live socket (/ws/live/, the session cookie signs it
// in). The server answers with partials, shown greyed and replaced as they grow, and
// finals, which replace their utterance's partial for good. After Stop the server
// sends the job the session became; the job list (upload.js) takes it.
(function () {
  "use strict";

  const section = document.getElementById("dictation");
  if (!section) return;
  const startButton = document.getElementById("dictate-start");
  const stopButton = document.getElementById("dictate-stop");
  const statusLine = document.getElementById("dictation-status");
  const errorLine = document.getElementById("dictation-error");
  const transcript = document.getElementById("live-transcript");
  const language = document.getElementById("language");
  const rates = (window.KIKI && window.KIKI.liveRates) || [16000, 44100, 48000];

  const FRAME_MS = 100;
  // Frames held while the socket opens (it takes well under a second); a socket that
  // takes longer than this loses the oldest.
  const MAX_QUEUED = Math.round(10000 / FRAME_MS);
  // After Stop the server sends "end" once the last final is stored; if it never
  // does (no live worker), the page stops waiting: the session still ends as a job.
  const END_WAIT_MS = 60000;

  let current = null; // the session being recorded or finished

  function setState(state, text) {
    section.dataset.state = state;
    statusLine.textContent = text;
    startButton.disabled = state !== "idle";
    stopButton.disabled = state !== "starting" && state !== "live";
  }

  function showError(text) {
    errorLine.textContent = text || "";
    errorLine.hidden = !text;
  }

  function microphoneWords(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "The browser was not allowed to use the microphone: allow it for this site and try again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      return "No microphone was found.";
    }
    if (name === "NotReadableError") {
      return "The microphone is in use by another program, or the system refused it.";
    }
    return `The microphone could not be opened (${(err && err.message) || name || err}).`;
  }

  // What a close that came before "end" means, for a person.
  function closeWords(event) {
    const reason = event.reason ? ` (${event.reason})` : "";
    switch (event.code) {
      case 1013:
        return `The server is too busy to take dictation right now${reason}. Try again in a little while.`;
      case 4401:
        return "You are signed out: reload the page to sign in again.";
      case 4409:
        return "This session was taken over by another connection.";
      case 1006:
        return "The connection to the server was lost. What was said before it is kept in the job list.";
      default:
        return `Dictation stopped${reason || ` (code ${event.code})`}.`;
    }
  }

  // --- The live transcript -----------------------------------------------------------
  function utterance(index) {
    let node = transcript.querySelector(`[data-utterance="${index}"]`);
    if (!node) {
      node = document.createElement("span");
      node.dataset.utterance = String(index);
      // In utterance order, whatever order partials and finals come in.
      const after = [...transcript.querySelectorAll("[data-utterance]")].find(
        (other) => Number(other.dataset.utterance) > index
      );
      transcript.insertBefore(node, after || null);
      transcript.insertBefore(document.createTextNode(" "), after || null);
    }
    return node;
  }

  function showPartial(index, text) {
    const node = utterance(index);
    if (node.classList.contains("final")) return; // a late partial: the final stands
    node.className = "utterance partial";
    // Screen readers announce the finals only, not every growing guess.
    node.setAttribute("aria-hidden", "true");
    node.textContent = text;
  }

  function showFinal(index, text) {
    const node = utterance(index);
    node.className = "utterance final";
    node.removeAttribute("aria-hidden");
    node.textContent = text;
    if (!text) {
      // Noise the VAD took for speech: nothing to show.
      if (node.nextSibling && node.nextSibling.nodeType === Node.TEXT_NODE) node.nextSibling.remove();
      node.remove();
    }
  }

  // --- Audio and socket ---------------------------------------------------------------
  function release(session) {
    for (const track of session.stream.getTracks()) track.stop();
    if (session.node) {
      session.node.port.onmessage = null;
      session.node.disconnect();
    }
    if (session.ctx && session.ctx.state !== "closed") session.ctx.close().catch(() => {});
    session.node = null;
  }

  function send(session, data) {
    const socket = session.socket;
    if (socket && socket.readyState === WebSocket.OPEN && session.started) {
      socket.send(data);
    } else if (!session.started) {
      session.queue.push(data);
      if (session.queue.length > MAX_QUEUED) session.queue.shift();
    }
  }

  function finish(session, error, status) {
    if (session.finished) return; // a timeout, then the close it causes
    session.finished = true;
    clearTimeout(session.endTimer);
    release(session);
    if (session.socket && session.socket.readyState <= WebSocket.OPEN) session.socket.close();
    if (current === session) current = null;
    if (error) showError(error);
    setState("idle", status || (error ? "stopped" : "ready"));
  }

  function onMessage(session, data) {
    switch (data.type) {
      case "ready":
        session.id = data.session;
        section.dataset.session = data.session;
        if (!session.stopping) setState("live", "listening…");
        break;
      case "speech_started":
        if (!session.stopping) setState("live", "hearing speech…");
        break;
      case "speech_stopped":
        if (!session.stopping) setState("live", "listening…");
        break;
      case "partial":
        showPartial(data.utterance, data.text);
        break;
      case "final":
        showFinal(data.index, data.text);
        break;
      case "end":
        session.ended = true;
        document.dispatchEvent(new CustomEvent("kiki:job", { detail: data.job }));
        finish(session, "", "saved: the session is in your jobs below");
        break;
      case "error":
        // Shown as it comes: some (idle, maximum length) end the session normally.
        showError(data.message);
        break;
      default:
        break; // heartbeat
    }
  }

  function openSocket(session) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/live/`);
    session.socket = socket;
    socket.addEventListener("open", () => {
      socket.send(
        JSON.stringify({
          type: "start",
          sample_rate: session.ctx.sampleRate,
          language: language && language.value ? language.value : "auto",
          name: `Dictation ${new Date().toLocaleString()}`,
        })
      );
      session.started = true;
      // Frames are taken in order after the start message: no need to wait for ready.
      for (const frame of session.queue.splice(0)) socket.send(frame);
      if (session.flushed) socket.send(JSON.stringify({ type: "stop" }));
    });
    socket.addEventListener("message", (message) => {
      if (typeof message.data !== "string") return;
      onMessage(session, JSON.parse(message.data));
    });
    socket.addEventListener("close", (event) => {
      // After "end" the close is the expected one. Before it, the close's code says
      // why (a refusal's error message came first; this puts it in words).
      if (!session.ended) finish(session, closeWords(event));
    });
  }

  async function start() {
    showError("");
    transcript.replaceChildren();
    delete section.dataset.session;
    // Not "starting" yet: there is nothing to stop while the browser asks.
    setState("asking", "asking for the microphone…");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
      setState("idle", "stopped");
      showError("This browser cannot record here: dictation needs a secure page (https, or localhost).");
      return;
    }
    let stream;
    try {
      // The browser's speech processing (echo cancelling, noise suppression, gain)
      // stays on: it is tuned for voices at a desk.
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    } catch (err) {
      setState("idle", "stopped");
      showError(microphoneWords(err));
      return;
    }
    const session = {
      stream, ctx: null, node: null, socket: null, queue: [], id: null,
      started: false, stopping: false, flushed: false, ended: false, finished: false, endTimer: null,
    };
    current = session;
    setState("starting", "connecting…");
    try {
      let ctx = new AudioContext();
      if (!rates.includes(ctx.sampleRate)) {
        // A rate the server does not take (96 kHz devices): the browser resamples.
        await ctx.close();
        ctx = new AudioContext({ sampleRate: 48000 });
      }
      session.ctx = ctx;
      await ctx.audioWorklet.addModule(section.dataset.worklet);
      if (current !== session) return; // stopped meanwhile
      const node = new AudioWorkletNode(ctx, "pcm-sender", { processorOptions: { frameMs: FRAME_MS } });
      session.node = node;
      node.port.onmessage = (event) => {
        if (event.data === "flushed") {
          session.flushed = true;
          release(session);
          if (session.started && session.socket.readyState === WebSocket.OPEN) {
            session.socket.send(JSON.stringify({ type: "stop" }));
          }
        } else {
          send(session, event.data);
        }
      };
      ctx.createMediaStreamSource(stream).connect(node);
      // Connected to the output so the graph pulls it; it writes silence there.
      node.connect(ctx.destination);
      await ctx.resume();
    } catch (err) {
      finish(session, `The audio could not be set up in this browser (${err.message || err}).`);
      return;
    }
    openSocket(session);
  }

  function stop() {
    const session = current;
    if (!session || session.stopping) return;
    session.stopping = true;
    setState("stopping", "finishing the last words…");
    if (session.node) {
      session.node.port.postMessage("flush"); // then "stop" goes, after the last frame
    } else {
      finish(session, "", "ready"); // nothing recorded yet
      return;
    }
    session.endTimer = setTimeout(() => {
      finish(session, "The server did not confirm the end in time; the session will show in your jobs once it is finished.");
    }, END_WAIT_MS);
  }

  startButton.addEventListener("click", start);
  stopButton.addEventListener("click", stop);
  setState("idle", "ready");
})();
