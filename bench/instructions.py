"""CPU instructions per submit (web) and per decode (worker), counted by callgrind.

On this small shared machine, timings of the same code drift by 20-50 % from run to
run (bench/pipeline.py prints a reference loop for that reason), so a change worth a
few percent cannot be seen in jobs/s. Instructions executed barely move between runs:
this script counts them for the two costs that decide throughput.

    .venv/bin/python bench/instructions.py            # both, about 2 minutes
    .venv/bin/python bench/instructions.py --only decode

  submit  one uvicorn process (the project's ASGI app, as bench/pipeline.py runs it)
          under callgrind: warmed up, then instrumented for N uploads of the bench's
          short clip, sent one at a time.
  decode  asr.audio.decode of the same clip in a Python process under callgrind,
          with the format the upload's probe found (as the worker decodes it).

Needs valgrind (Debian: apt-get install valgrind). Under valgrind, OpenSSL does not
see the CPU's SHA extensions, so the upload's sha256 counts ~2.9M instructions that
are ~0.06 ms natively; the figures include it, compare them with each other only.
Python's hash seed is fixed (PYTHONHASHSEED=0) so that dict layouts do not vary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipeline as bench  # bench/pipeline.py: the same world, clip and requests

DECODER = """
import inspect, io, sys
sys.path.insert(0, sys.argv[1])
from asr import audio
data = open(sys.argv[2], "rb").read()
info = audio.probe(io.BytesIO(data))
# (an older checkout's decode, measured to compare, may not take the format)
told = "format_name" in inspect.signature(audio.decode).parameters
extra = {"format_name": info.format_name} if told else {}
def once():
    audio.decode(io.BytesIO(data), max_seconds=3600, timeout=60, **extra)
once()
print("ready", flush=True)
for line in sys.stdin:
    for _ in range(int(line)):
        once()
    print("done", flush=True)
"""


def callgrind(args: list[str], out: Path, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *args,
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        text=True,
        **popen,  # type: ignore[arg-type]
    )


def instrument(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        check=True,
        capture_output=True,
    )


def collected(out: Path) -> int:
    """Instructions in the dumps callgrind wrote for one process (one per dump)."""
    total = 0
    for path in out.parent.glob(out.name + "*"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def measure_decode(clip: Path, count: int, work: Path) -> float:
    out = work / "decode.cg"
    proc = callgrind(
        [sys.executable, "-c", DECODER, str(bench.ROOT), str(clip)],
        out,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the decoder did not start under valgrind")
        instrument(proc.pid, True)
        proc.stdin.write(f"{count}\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != "done":
            raise RuntimeError("the decoder stopped")
        instrument(proc.pid, False)
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    return collected(out) / count


def send(port: int, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 202"):
        raise RuntimeError(f"upload refused: {head.decode(errors='replace')}")


def measure_submit(clip: Path, count: int, work: Path) -> float:
    import httpx

    _, token = bench.make_token("instructions")
    port = bench.free_port()
    out = work / "web.cg"
    log = (work / "web.log").open("w")
    proc = callgrind(
        bench.uvicorn_command(port=port, workers=1, log_level="warning"),
        out,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).is_success:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"web did not start: see {work / 'web.log'}")
            time.sleep(0.5)
        request = bench.multipart_request(f"http://127.0.0.1:{port}", token, clip)
        for _ in range(10):  # every lazy import and first-time cache filled
            send(port, request)
        time.sleep(1)
        instrument(proc.pid, True)
        for _ in range(count):
            send(port, request)
        # The last answer is out before its commit hooks' pushes are: let them run.
        time.sleep(2)
        instrument(proc.pid, False)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    return collected(out) / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["submit", "decode"], action="append")
    parser.add_argument("--submits", type=int, default=100)
    parser.add_argument("--decodes", type=int, default=40)
    args = parser.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 2
    phases = args.only or ["submit", "decode"]
    bench.configure_environment()
    bench.setup_django()
    clip = bench.short_clip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kiki-callgrind-") as tmp:
        work = Path(tmp)
        try:
            if "submit" in phases:
                per = measure_submit(clip, args.submits, work)
                rows.append((f"per submit ({args.submits} uploads)", per))
            if "decode" in phases:
                per = measure_decode(clip, args.decodes, work)
                rows.append((f"per decode ({args.decodes} decodes)", per))
        finally:
            bench.remove_bench_users()
    seconds = bench.clip_seconds(clip)
    print(f"clip: {clip.relative_to(bench.ROOT)}, {seconds:.2f} s of audio")
    for label, per in rows:
        print(f"instructions {label:<28} {per / 1e6:8.2f} M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
