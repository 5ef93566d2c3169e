"""The shared store (``--store redis://HOST:PORT/DB``): several replicas on one Redis.

Every replica reads and writes the same keys, so any of them answers GET, input_items, stream
resume, cancel and DELETE for a response another one runs:

* ``{p}r:{id}``: a hash with the encoded record, the number of events, their bytes and the
  replica running it (empty once finished); ``{p}e:{id}``: the events, a Redis Stream whose
  entry ids are ``seq+1-0``, so a replica that follows a stream reads it live with XREAD.
* ``{p}running``: response id → running replica; ``{p}finished``: a sorted set by finish
  time (the eviction order); ``{p}bytes``: the total size; ``{p}item``: item id → response
  id (``{p}items:{id}`` lists a response's items for cleanup).
* ``{p}replica:{rid}``: each replica's heartbeat, expiring after the heartbeat timeout; a
  running response whose replica's heartbeat is gone is claimed by another and ended.
* ``{p}gone:{id}``: a tombstone of a deleted response, so that the replica still running it
  cannot write it back; ``{p}signal:{rid}``: the pub/sub channel by which other replicas ask
  one to cancel a run (it reaches the run before its next token).

Writes, deletes, claims and eviction are Lua scripts, each atomic on the server, so replicas
never interleave half-done changes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import StoreError
from .store import Clock, RecordWrite, Retention, Stored, new_replica_id

#: Layout of the keys; a Redis holding a newer one is refused.
LAYOUT_VERSION = 1
#: How long a deleted response's id stays refused to the replica that may still run it.
_TOMBSTONE_MS = 24 * 3600 * 1000
#: How long one blocking read of a followed stream waits before checking the response.
_BLOCK_MS = 1000
#: Responses one eviction pass drops at most (Redis runs a script alone: keep it short).
_EVICT_BATCH = 1000

_DROP = """
local function drop(P, id)
  local head = P .. 'r:' .. id
  if redis.call('EXISTS', head) == 1 then
    redis.call('DECRBY', P .. 'bytes', tonumber(redis.call('HGET', head, 'bytes') or '0'))
  end
  for _, item in ipairs(redis.call('SMEMBERS', P .. 'items:' .. id)) do
    redis.call('HDEL', P .. 'item', item)
  end
  redis.call('DEL', head, P .. 'e:' .. id, P .. 'items:' .. id)
  redis.call('ZREM', P .. 'finished', id)
  redis.call('HDEL', P .. 'running', id)
end
"""

# ARGV: prefix, id, replica, done, now, record, fixed ('' after the first write), first
# event, n, n events..., item ids...
_SAVE = """
local P, id, rid = ARGV[1], ARGV[2], ARGV[3]
local done = ARGV[4] == '1'
local head = P .. 'r:' .. id
if redis.call('EXISTS', P .. 'gone:' .. id) == 1 then return 0 end
local owner = redis.call('HGET', P .. 'running', id)
local exists = redis.call('EXISTS', head) == 1
if owner then
  if owner ~= rid then return 0 end
elseif exists then
  return 0
end
local first, n = tonumber(ARGV[8]), tonumber(ARGV[9])
if not exists and ARGV[7] == '' then return 0 end
local stored = tonumber(redis.call('HGET', head, 'events') or '0')
local ebytes = tonumber(redis.call('HGET', head, 'ebytes') or '0')
local old = tonumber(redis.call('HGET', head, 'bytes') or '0')
for i = 0, n - 1 do
  if first + i >= stored then
    local event = ARGV[10 + i]
    redis.call('XADD', P .. 'e:' .. id, (first + i + 1) .. '-0', 'e', event)
    ebytes = ebytes + #event
  end
end
if ARGV[7] ~= '' then redis.call('HSET', head, 'fixed', ARGV[7]) end
local size = #ARGV[6] + redis.call('HSTRLEN', head, 'fixed') + ebytes
redis.call('HSET', head, 'record', ARGV[6], 'events', math.max(stored, first + n),
  'ebytes', ebytes, 'bytes', size, 'replica', done and '' or rid,
  'finished_at', done and ARGV[5] or '')
redis.call('INCRBY', P .. 'bytes', size - old)
for j = 10 + n, #ARGV do
  redis.call('HSET', P .. 'item', ARGV[j], id)
  redis.call('SADD', P .. 'items:' .. id, ARGV[j])
end
if done then
  redis.call('HDEL', P .. 'running', id)
  redis.call('ZADD', P .. 'finished', ARGV[5], id)
else
  redis.call('HSET', P .. 'running', id, rid)
end
return 1
"""

# ARGV: prefix, now, ttl, max responses, max bytes, batch. Mirrors store.evictions().
_EVICT = (
    _DROP
    + """
local P = ARGV[1]
local cutoff = tonumber(ARGV[2]) - tonumber(ARGV[3])
local max_count, max_bytes, batch = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local dropped = 0
while dropped < batch do
  local oldest = redis.call('ZRANGE', P .. 'finished', 0, 0, 'WITHSCORES')
  if #oldest == 0 then break end
  local count = redis.call('ZCARD', P .. 'finished') + redis.call('HLEN', P .. 'running')
  local size = tonumber(redis.call('GET', P .. 'bytes') or '0')
  if tonumber(oldest[2]) >= cutoff and count <= max_count and size <= max_bytes then break end
  drop(P, oldest[1])
  dropped = dropped + 1
end
return dropped
"""
)

# ARGV: prefix, id, tombstone ms. Returns record, fixed, events, replica (or nil).
_DELETE = (
    _DROP
    + """
local P, id = ARGV[1], ARGV[2]
local found = redis.call('HMGET', P .. 'r:' .. id, 'record', 'fixed', 'events', 'replica')
if not found[1] then return false end
drop(P, id)
redis.call('SET', P .. 'gone:' .. id, '1', 'PX', ARGV[3])
return found
"""
)

# ARGV: prefix, id, the gone replica, this replica. Returns what load returns (or nil).
_CLAIM = """
local P, id = ARGV[1], ARGV[2]
if redis.call('HGET', P .. 'running', id) ~= ARGV[3] then return false end
redis.call('HSET', P .. 'running', id, ARGV[4])
redis.call('HSET', P .. 'r:' .. id, 'replica', ARGV[4])
return redis.call('HMGET', P .. 'r:' .. id, 'record', 'fixed', 'events', 'replica')
"""


@contextlib.contextmanager
def _failures() -> Iterator[None]:
    """Redis and connection errors as StoreError (the server answers 503)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"The Redis store failed: {exc}") from exc


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""


def _stored(found: Any) -> Stored | None:
    """A Stored from the reply [record, fixed, events, replica] (None when absent)."""
    if not found or found[0] is None:
        return None
    record, fixed, events, replica = found
    return Stored(bytes(record), bytes(fixed), int(events), _text(replica) or None)


#: XREAD's reply: [(stream, [(entry id, {field: value})])].
_StreamReply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


class RedisStore:
    """Responses in Redis, shared by every replica that points at it."""

    def __init__(
        self,
        url: str,
        retention: Retention | None = None,
        *,
        heartbeat_timeout: float = 10.0,
        clock: Clock = time.time,
        prefix: str = "exloop:",
    ) -> None:
        self.replica = new_replica_id()
        self.url = url
        self._retention = retention or Retention()
        self._heartbeat_ms = max(1, int(heartbeat_timeout * 1000))
        #: A few heartbeats per timeout, so one late beat does not declare this replica gone.
        self.upkeep_interval = heartbeat_timeout / 4
        self._clock = clock
        self._p = prefix
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=5)
        self._save = self._redis.register_script(_SAVE)
        self._evict = self._redis.register_script(_EVICT)
        self._delete = self._redis.register_script(_DELETE)
        self._claim = self._redis.register_script(_CLAIM)

    async def __aenter__(self) -> RedisStore:
        with _failures():
            await self._redis.set(f"{self._p}layout", LAYOUT_VERSION, nx=True)
            layout = int(await self._redis.get(f"{self._p}layout") or 0)
            if layout > LAYOUT_VERSION:
                await self._redis.aclose()
                raise StoreError(
                    f"The Redis store at {self.url} has layout version {layout}, newer than "
                    f"this exloop knows ({LAYOUT_VERSION}): it was written by a newer exloop."
                )
            await self._beat()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._heartbeat_key(self.replica))
        await self._redis.aclose()

    def _heartbeat_key(self, replica: str) -> str:
        return f"{self._p}replica:{replica}"

    async def _beat(self) -> None:
        await self._redis.set(self._heartbeat_key(self.replica), 1, px=self._heartbeat_ms)

    # -- writing --------------------------------------------------------------------------

    async def save(self, writes: Sequence[RecordWrite]) -> set[str]:
        now = repr(self._clock())
        with _failures():
            async with self._redis.pipeline(transaction=False) as pipe:
                for write in writes:
                    args: list[Any] = [
                        self._p,
                        write.id,
                        self.replica,
                        int(write.done),
                        now,
                        write.record,
                        write.fixed or b"",
                        write.first_event,
                        len(write.events),
                        *write.events,
                        *write.item_ids,
                    ]
                    await self._save(args=args, client=pipe)
                results = await pipe.execute()
            if any(write.done for write in writes):
                await self._run_eviction()
        return {write.id for write, ok in zip(writes, results, strict=True) if not ok}

    async def _run_eviction(self) -> None:
        retention = self._retention
        await self._evict(
            args=[
                self._p,
                repr(self._clock()),
                repr(retention.ttl),
                retention.max_responses,
                retention.max_bytes,
                _EVICT_BATCH,
            ]
        )

    async def delete(self, response_id: str) -> Stored | None:
        with _failures():
            found = await self._delete(args=[self._p, response_id, _TOMBSTONE_MS])
        return _stored(found)

    # -- reading --------------------------------------------------------------------------

    async def load(self, response_id: str) -> Stored | None:
        with _failures():
            *found, finished_at = await self._redis.hmget(
                f"{self._p}r:{response_id}",
                ["record", "fixed", "events", "replica", "finished_at"],
            )
        if finished_at and float(finished_at) < self._clock() - self._retention.ttl:
            return None  # expired; the next eviction pass removes it
        return _stored(found)

    async def events(self, response_id: str, after: int) -> AsyncIterator[bytes]:
        key = f"{self._p}e:{response_id}"
        last = after + 1  # entry ids are sequence number + 1
        block: int | None = None
        while True:
            with _failures():
                reply: _StreamReply = await self._redis.xread(  # type: ignore[assignment]
                    {key: f"{last}-0"}, count=512, block=block
                )
            entries = reply[0][1] if reply else []
            for entry_id, fields in entries:
                last = int(entry_id.split(b"-")[0])
                yield fields[b"e"]
            if entries:
                block = None
                continue
            with _failures():
                events, replica = await self._redis.hmget(
                    f"{self._p}r:{response_id}", ["events", "replica"]
                )
            if events is None or (not replica and int(events) <= last):
                return  # deleted, or finished and read to the end
            block = _BLOCK_MS

    async def response_of_item(self, item_id: str) -> str | None:
        with _failures():
            found = await self._redis.hget(f"{self._p}item", item_id)
        return _text(found) or None

    async def count(self) -> int:
        with _failures():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zcard(f"{self._p}finished")
                pipe.hlen(f"{self._p}running")
                finished, running = await pipe.execute()
        return int(finished) + int(running)

    # -- replicas -------------------------------------------------------------------------

    async def upkeep(self) -> None:
        with _failures():
            await self._beat()
            await self._run_eviction()

    async def alive(self, replica: str) -> bool:
        with _failures():
            return replica == self.replica or bool(
                await self._redis.exists(self._heartbeat_key(replica))
            )

    async def claim(self, response_id: str, replica: str) -> Stored | None:
        if await self.alive(replica):
            return None
        with _failures():
            found = await self._claim(args=[self._p, response_id, replica, self.replica])
        return _stored(found)

    async def claim_orphans(self) -> list[Stored]:
        with _failures():
            running = await self._redis.hgetall(f"{self._p}running")
        claimed: list[Stored] = []
        gone: dict[str, bool] = {}
        for raw_id, raw_replica in running.items():
            replica = _text(raw_replica)
            if replica == self.replica:
                continue
            if replica not in gone:
                gone[replica] = not await self.alive(replica)
            if gone[replica]:
                stored = await self.claim(_text(raw_id), replica)
                if stored is not None:
                    claimed.append(stored)
        return claimed

    async def signal(self, replica: str, response_id: str) -> None:
        with _failures():
            await self._redis.publish(f"{self._p}signal:{replica}", response_id)

    async def signals(self) -> AsyncIterator[str]:
        with _failures():
            async with self._redis.pubsub() as pubsub:
                await pubsub.subscribe(f"{self._p}signal:{self.replica}")
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        yield _text(message["data"])
