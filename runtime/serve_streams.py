"""bnwvad-serve's streaming deployment (--streams): sessions of runtime.stream behind HTTP.

    POST /v1/streams          open a streaming session -> {"id": ...}
    POST /v1/streams/{id}     its next snippets -> the results that became final
    DELETE /v1/streams/{id}   end it: the remaining results; the session is closed
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .contract import OUTPUTS
from .errors import InputError
from .serve_compute import ComputeQueue
from .serve_config import ServeConfig, open_runner
from .serve_requests import (BODY_LABEL, RequestError, decode_snippets, error_response, error_status, json_response,
                             read_body, route_parts)

log = logging.getLogger("bnwvad.runtime.serve")


@dataclass
class _Session:
    id: str
    key: tuple
    last: float = field(default_factory=time.monotonic)


class StreamService:
    """Streaming sessions (runtime.stream.StreamGroup) behind HTTP: one replica holds every
    session (state lives in its memory), so this deployment always has exactly one replica.

    Sessions with the same (window, lookahead, step) share a StreamGroup; pushes that arrive
    together are scored in one `push_many` (one batch of runner calls) on the compute thread.
    At most `max_streams` sessions are open; one untouched for `stream_idle_s` is closed (its
    results dropped) when the next request comes.
    """

    def __init__(self, config: Mapping):
        self.cfg = ServeConfig.from_dict(config)
        self.runner = open_runner(self.cfg)
        self.meta = self.runner.meta
        self.crops = self.meta.crops if self.cfg.crops == "model" else self.cfg.crops
        self.compute = ComputeQueue(name="bnwvad-streams")
        self.groups: dict[tuple, Any] = {}
        self.sessions: dict[str, _Session] = {}
        self._pending: list[tuple] = []          # (session, snippets, future) waiting for a round
        self._round_scheduled = False
        self.counters = {"opened": 0, "closed": 0, "expired": 0, "pushes": 0, "rounds": 0}

    def check_health(self) -> None:
        return None

    async def __call__(self, request):
        try:
            return await self._dispatch(request)
        except RequestError as e:
            return error_response(e.status, e.message)
        except Exception as e:            # noqa: BLE001
            status = error_status(e)
            if status == 500:
                log.exception("stream request failed")
            return error_response(status, str(e) or type(e).__name__)

    async def _dispatch(self, request):
        await self._expire()
        parts, method = route_parts(request.url.path), request.method.upper()
        if parts[:2] != ["v1", "streams"] or len(parts) > 3:
            raise RequestError(404, f"no route {method} {request.url.path}")
        if len(parts) == 2:
            if method == "POST":
                return json_response(await self.open(request))
            if method == "GET":
                return json_response({"streams": len(self.sessions), "max_streams": self.cfg.max_streams,
                              **self.counters})
            raise RequestError(405, f"method {method} not allowed on /v1/streams; expected POST (open)")
        sid = parts[2]
        s = self.sessions.get(sid)
        if s is None:
            raise RequestError(404, f"stream {sid!r} is not open (closed, expired after "
                                    f"{self.cfg.stream_idle_s:g} s idle, or never opened); open one with "
                                    f"POST /v1/streams")
        s.last = time.monotonic()
        if method == "POST":
            body = await read_body(request, self.cfg.max_body)
            x = decode_snippets(body, request.headers.get("content-type", ""), feature_dim=self.meta.feature_dim)
            return json_response(self._records(s, await self.push(s, x)))
        if method == "DELETE":
            out = await self.compute.submit(0, self._flush, s)
            return json_response({**self._records(s, out), "closed": True})
        raise RequestError(405, f"method {method} not allowed on a stream; expected POST (push) or DELETE")

    async def open(self, request) -> dict:
        from .stream import StreamGroup

        body = await read_body(request, 1 << 16)
        try:
            doc = json.loads(body) if body.strip() else {}
        except ValueError as e:
            raise RequestError(400, f"{BODY_LABEL}: not valid JSON ({e}); expected "
                                    f'{{"window": 64, "lookahead": 4, "step": 1}}') from None
        q = request.query_params
        if not isinstance(doc, dict):
            raise RequestError(400, f"{BODY_LABEL}: a JSON {type(doc).__name__}; expected an object")

        def num(name, default, low):
            v = doc.get(name, q.get(name, default))
            try:
                v = int(v)
            except (TypeError, ValueError):
                raise RequestError(400, f"{name} = {v!r}; expected an integer >= {low}") from None
            if v < low:
                raise RequestError(400, f"{name} = {v}; expected an integer >= {low}")
            return v

        key = (num("window", 64, 1), num("lookahead", 0, 0), num("step", 1, 1))
        if len(self.sessions) >= self.cfg.max_streams:
            raise RequestError(429, f"{len(self.sessions)} streams are open, this server's limit "
                                    f"(--max-streams {self.cfg.max_streams}); close one (DELETE) first")
        group = self.groups.get(key)
        if group is None:
            group = StreamGroup(self.runner, *key, crops=self.crops if self.crops is not None else None,
                                memory_budget=self.cfg.memory_budget)
            self.groups[key] = group
        sid = uuid.uuid4().hex[:16]
        group.open(sid)
        self.sessions[sid] = _Session(sid, key)
        self.counters["opened"] += 1
        return {"id": sid, "window": key[0], "lookahead": key[1], "step": key[2], "delay": group.delay,
                "crops": group.crops, "feature_dim": self.meta.feature_dim,
                "weights_digest": self.cfg.weights_digest or self.meta.weights_digest}

    async def push(self, s: _Session, x: np.ndarray):
        """Queue the push; pushes waiting together go in one round (`_round`)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((s, x, fut))
        self.counters["pushes"] += 1
        if not self._round_scheduled:
            self._round_scheduled = True
            loop.create_task(self._run_rounds())
        return await fut

    async def _run_rounds(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(0)              # let concurrent pushes join this round
                batch, self._pending = self._pending, []
                try:
                    results = await self.compute.submit(0, self._round, batch)
                except Exception as e:          # noqa: BLE001 - the runner failed
                    results = [e] * len(batch)
                for (_, _, fut), r in zip(batch, results):
                    if fut.done():
                        continue
                    if isinstance(r, BaseException):
                        fut.set_exception(r)
                    else:
                        fut.set_result(r)
        finally:
            self._round_scheduled = False

    def _round(self, batch: list) -> list:
        """On the compute thread: each group's pushes in push_many calls (one per stream each)."""
        self.counters["rounds"] += 1
        out: list = [None] * len(batch)
        todo = list(range(len(batch)))
        while todo:
            taken: dict[tuple, dict] = {}
            later = []
            for i in todo:
                s = batch[i][0]
                g = taken.setdefault(s.key, {})
                if s.id in g:
                    later.append(i)
                else:
                    g[s.id] = i
            for key, ids in taken.items():
                group = self.groups[key]
                pushes = {sid: batch[i][1] for sid, i in ids.items()}
                try:
                    res = group.push_many(pushes)
                except InputError as e:
                    # A bad push changes no stream: fail that one, run the others again.
                    bad = getattr(e, "stream", None)
                    for sid, i in ids.items():
                        if sid == bad:
                            out[i] = e
                            pushes.pop(sid)
                    try:
                        res = group.push_many(pushes) if pushes else {}
                    except Exception as e2:     # noqa: BLE001
                        res = {sid: e2 for sid in pushes}
                for sid, r in res.items():
                    out[ids[sid]] = r
            todo = later
        return out

    def _flush(self, s: _Session):
        group = self.groups[s.key]
        try:
            return group.flush([s.id])[s.id]
        finally:
            self.sessions.pop(s.id, None)
            self.counters["closed"] += 1

    async def _expire(self) -> None:
        """Close the sessions untouched for stream_idle_s (their last results are dropped)."""
        now = time.monotonic()
        for sid, s in list(self.sessions.items()):
            if now - s.last > self.cfg.stream_idle_s and self.sessions.pop(sid, None) is not None:
                self.counters["expired"] += 1
                try:
                    await self.compute.submit(0, self.groups[s.key].flush, [sid])
                except Exception:          # noqa: BLE001 - it is being dropped anyway
                    log.warning("closing expired stream %s failed", sid, exc_info=True)

    def _records(self, s: _Session, rec) -> dict:
        if isinstance(rec, BaseException):
            raise rec
        group = self.groups[s.key]
        handle_final = None
        if s.id in group.streams:
            handle_final = group.handle(s.id).final
        return {"id": s.id, "snippet": rec["snippet"].tolist(),
                **{k: rec[k].astype(np.float64).tolist() for k in OUTPUTS},
                "final": handle_final, "latency_ms": float(rec["latency_ms"][0]) if len(rec) else None}


__all__ = ["StreamService"]
