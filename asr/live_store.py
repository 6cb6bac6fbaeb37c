"""A live session's audio and state in Redis, where every worker can read them.

The web process appends each stream's 16 kHz PCM16 audio to one Redis string
(APPEND) and records each utterance it cuts; a live worker on any machine reads the
samples of one utterance (GETRANGE) and never a local disk. At the end the session's
audio goes to the storage API (asr.services.live) and these keys are deleted; until
then they expire on their own LIVE_STATE_TTL after the last write, so a session
nobody finishes cannot hold Redis memory for ever.

Keys (under the broker's prefix, so a test run's keys are its own):
  live:<id>:pcm     the audio so far
  live:<id>         hash: owner, language, hotwords, next (utterances cut so far),
                    samples, state (streaming | detached | stopped), conn (the
                    connection streaming it), detached_at (when it dropped), u:<i> ("start end" of utterance i,
                    in samples)
  live:<id>:prep:<i> utterance i transcribed ahead of its end point (JSON)
  live:active       sorted set: session id -> last time its connection said it
                    was streaming (every few seconds; removed when it stops)
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
from django.conf import settings

from asr.ops import redis_state

BYTES_PER_SAMPLE = 2


def _key(session_id: str, part: str = "") -> str:
    return f"{redis_state.key_prefix()}live:{session_id}{part}"


def _active_key() -> str:
    return f"{redis_state.key_prefix()}live:active"


def utterance_field(index: int) -> str:
    return f"u:{index}"


# Web side (asyncio) -------------------------------------------------------------------

# Weakly: a loop that is gone (a test's asyncio.run) takes its client with it.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


def aclient() -> Any:
    """This event loop's client (a connection pool belongs to one loop). Typed
    loosely: redis-py's stubs give sync and async commands one return type."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = aioredis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=5
        )
        _async_clients[loop] = client
    return client


async def session_create(session_id: str, meta: dict[str, str]) -> None:
    ttl = settings.LIVE_STATE_TTL
    pipe = aclient().pipeline(transaction=True)
    pipe.hset(_key(session_id), mapping={**meta, "next": 0, "samples": 0})
    pipe.set(_key(session_id, ":pcm"), b"")
    pipe.expire(_key(session_id), ttl)
    pipe.expire(_key(session_id, ":pcm"), ttl)
    await pipe.execute()


async def session_state(session_id: str) -> dict[str, str]:
    raw = await aclient().hgetall(_key(session_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


async def session_set(session_id: str, **fields: str | int) -> None:
    await aclient().hset(_key(session_id), mapping=fields)


async def audio_append(session_id: str, pcm: bytes) -> None:
    """Append 16 kHz PCM16 audio (its TTL is renewed by ``session_renew``)."""
    pipe = aclient().pipeline(transaction=True)
    pipe.append(_key(session_id, ":pcm"), pcm)
    pipe.hincrby(_key(session_id), "samples", len(pcm) // BYTES_PER_SAMPLE)
    await pipe.execute()


async def session_renew(session_id: str) -> None:
    """While it streams (every few seconds): its keys' TTL starts again, and it
    counts as a live stream (live:active)."""
    ttl = settings.LIVE_STATE_TTL
    pipe = aclient().pipeline(transaction=False)
    pipe.expire(_key(session_id, ":pcm"), ttl)
    pipe.expire(_key(session_id), ttl)
    pipe.zadd(_active_key(), {session_id: time.time()})
    await pipe.execute()


async def audio_samples(session_id: str) -> int:
    return int(await aclient().strlen(_key(session_id, ":pcm"))) // BYTES_PER_SAMPLE


async def utterance_begin(session_id: str, index: int, start: int) -> None:
    """Speech began at sample ``start``: utterance ``index`` is open."""
    await aclient().hset(
        _key(session_id), mapping={"next": index + 1, f"s:{index}": start}
    )


async def utterance_end(session_id: str, index: int, start: int, end: int) -> None:
    """Utterance ``index`` is [start, end): its final may be made."""
    await aclient().hset(_key(session_id), utterance_field(index), f"{start} {end}")


# Marks the session detached only if ``conn`` still names this connection: a newer
# one that resumed it meanwhile keeps it streaming.
_DETACH = """
if redis.call('HGET', KEYS[1], 'conn') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'detached', 'detached_at', ARGV[2])
  return 1
end
return 0
"""


async def detach_if_owner(session_id: str, conn: str) -> bool:
    return bool(
        await aclient().eval(_DETACH, 1, _key(session_id), conn, str(time.time()))
    )


_partial_backlog: tuple[float, int] = (0.0, 0)


async def partial_backlog(*, max_age: float = 0.5) -> int:
    """Partials waiting in the live_partial queue, read at most every ``max_age``
    seconds per web process (every stream asks before each partial)."""
    global _partial_backlog
    now = time.monotonic()
    if now - _partial_backlog[0] < max_age:
        return _partial_backlog[1]
    _partial_backlog = (now, _partial_backlog[1])
    prefix = redis_state.key_prefix()
    pipe = aclient().pipeline(transaction=False)
    for key in redis_state.queue_keys("live_partial"):
        pipe.llen(f"{prefix}{key}")
    depth = sum(int(n) for n in await pipe.execute())
    _partial_backlog = (now, depth)
    return depth


async def active_touch(session_id: str) -> None:
    await aclient().zadd(_active_key(), {session_id: time.time()})


async def active_remove(session_id: str) -> None:
    await aclient().zrem(_active_key(), session_id)


async def active_count(window: float) -> int:
    """Sessions streamed by some connection within the last ``window`` seconds."""
    client = aclient()
    now = time.time()
    pipe = client.pipeline(transaction=False)
    # Sessions of connections that died without saying so fall out by themselves.
    pipe.zremrangebyscore(_active_key(), "-inf", now - 10 * window)
    pipe.zcount(_active_key(), now - window, "+inf")
    return int((await pipe.execute())[1])


# Worker side (sync) -------------------------------------------------------------------


def client() -> redis.Redis:
    return redis_state.client()


def state(session_id: str) -> dict[str, str]:
    raw: Any = client().hgetall(_key(session_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def audio_range(session_id: str, start: int, end: int) -> np.ndarray:
    """Samples [start, end) of the session's audio as float32 in [-1, 1]."""
    raw: Any = client().getrange(
        _key(session_id, ":pcm"),
        start * BYTES_PER_SAMPLE,
        end * BYTES_PER_SAMPLE - 1,
    )
    return pcm_to_float(bytes(raw))


def audio_all(session_id: str) -> bytes | None:
    raw: Any = client().get(_key(session_id, ":pcm"))
    return None if raw is None else bytes(raw)


def utterance_bounds(state: dict[str, str], index: int) -> tuple[int, int] | None:
    """Where utterance ``index`` is, once it has ended; None while it is open."""
    value = state.get(utterance_field(index))
    if not value:
        return None
    start, end = value.split()
    return int(start), int(end)


def utterance_open_bounds(state: dict[str, str], index: int) -> tuple[int, int] | None:
    """An utterance that began and was never ended (its connection died): from its
    start to the end of the audio."""
    start = state.get(f"s:{index}")
    if start is None:
        return None
    return int(start), int(state.get("samples", 0))


def active_scores() -> list[tuple[str, float]]:
    raw: Any = client().zrange(_active_key(), 0, -1, withscores=True)
    return [(member.decode(), float(score)) for member, score in raw]


def finish_requested(session_id: str, *, ttl: float) -> bool:
    """True the first time within ``ttl``: the reconciler asks for a finish once."""
    return bool(client().set(_key(session_id, ":finish"), 1, nx=True, ex=int(ttl)))


def prepared_set(
    session_id: str, index: int, text: dict[str, Any], *, ttl: int | None = None
) -> None:
    """A final's text made ahead of its end point (asr.services.live.live_prepare)."""
    client().set(
        _key(session_id, f":prep:{index}"),
        json.dumps(text),
        ex=ttl or settings.LIVE_STATE_TTL,
    )


def prepared_get(session_id: str, index: int) -> dict[str, Any] | None:
    raw: Any = client().get(_key(session_id, f":prep:{index}"))
    return None if raw is None else dict(json.loads(raw))


def session_delete(session_id: str) -> None:
    pipe = client().pipeline(transaction=False)
    pipe.delete(_key(session_id), _key(session_id, ":pcm"), _key(session_id, ":finish"))
    # Prepared finals: one key per utterance, few; they expire anyway.
    for key in client().scan_iter(match=_key(session_id, ":prep:*"), count=1000):
        pipe.delete(key)
    pipe.zrem(_active_key(), session_id)
    pipe.execute()


def pcm_to_float(pcm: bytes) -> np.ndarray:
    usable = len(pcm) - len(pcm) % BYTES_PER_SAMPLE
    return np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float32) / 32768.0
