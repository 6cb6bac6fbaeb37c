// AudioWorklet processor for dictation: the microphone's Float32 samples become
// PCM16 (little-endian, mono, at the AudioContext's own rate) and are posted to the
// page in frames of about 100 ms, which the page sends over /ws/live/ as they come.
// It runs on the audio thread, so it only converts and copies: no allocation per
// render quantum except when a frame is handed over.
class PcmSender extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = (options.processorOptions && options.processorOptions.frameMs) || 100;
    // `sampleRate` is the AudioWorkletGlobalScope's: the context's rate.
    this.size = Math.max(128, Math.round((sampleRate * frameMs) / 1000));
    this.frame = new Int16Array(this.size);
    this.filled = 0;
    this.port.onmessage = (event) => {
      // The page stops: what is buffered goes out first, then a marker, so the page
      // sends "stop" only after the last audio.
      if (event.data === "flush") {
        if (this.filled) this.hand();
        this.port.postMessage("flushed");
      }
    };
  }

  hand() {
    const frame = this.frame.slice(0, this.filled);
    this.port.postMessage(frame.buffer, [frame.buffer]);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input.length) return true;
    const channels = input.length;
    const length = input[0].length;
    for (let i = 0; i < length; i++) {
      // A stereo device is mixed down: the server takes mono.
      let sample = 0;
      for (let c = 0; c < channels; c++) sample += input[c][i];
      sample /= channels;
      if (sample > 1) sample = 1;
      else if (sample < -1) sample = -1;
      this.frame[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
      if (this.filled === this.size) this.hand();
    }
    return true;
  }
}

registerProcessor("pcm-sender", PcmSender);
