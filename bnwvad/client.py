"""A client of bnwvad-serve, on the standard library only (urllib) plus numpy.

    from bnwvad.client import Client
    c = Client("http://127.0.0.1:8000")
    c.health()                              # {"status": "ok", ...}
    c.model()                               # metadata, backend, threshold, limits
    r = c.score(features)                   # (T, D), (T, C, D), (C, T, D) array or a .npy path
    r["anomaly"], r["events"]               # (T,) float32 arrays, events at the server's threshold

    s = c.open_stream(window=64, lookahead=4)       # with bnwvad-serve --streams
    part = s.push(snippets)                          # (k, C, D) -> the results that became final
    rest = s.close()                                 # the remaining results

Features travel as the bytes of a .npy file (application/octet-stream; float32 C-order as
given, nothing pickled); `as_json=True` sends a JSON body instead (small inputs). A 4xx/5xx
answer raises ServerError with the server's own message and the HTTP status; a server that
cannot be reached raises ServerUnavailable. Both are ClientError.
"""
from __future__ import annotations

import io
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

OUTPUTS = ("score", "dfm", "anomaly")
DEFAULT_TIMEOUT_S = 300.0


class ClientError(Exception):
    """A request to bnwvad-serve failed."""


class ServerError(ClientError):
    """The server answered with an error status; `status` and `message` are its answer."""

    def __init__(self, url: str, status: int, message: str):
        self.url, self.status, self.message = url, int(status), message
        super().__init__(f"{url}: HTTP {status}: {message}")


class ServerUnavailable(ClientError):
    """The server could not be reached, or the connection broke."""


def npy_bytes(features) -> bytes:
    """The .npy encoding of an array (float32 kept as is; C order), or of a .npy file's bytes."""
    if isinstance(features, (str, os.PathLike)):
        return Path(features).read_bytes()
    a = np.asarray(features)
    if a.dtype.hasobject:
        raise TypeError("features: an object array; expected a numeric array")
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _arrays(doc: dict, keys=OUTPUTS) -> dict:
    for k in keys:
        if isinstance(doc.get(k), list):
            doc[k] = np.asarray(doc[k], dtype=np.float32)
    return doc


class Client:
    """bnwvad-serve at `url` (e.g. http://127.0.0.1:8000). timeout: seconds per request."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_S):
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        self.timeout = float(timeout)

    # -- routes -----------------------------------------------------------------------------
    def health(self) -> dict:
        return self._request("GET", "/healthz")

    def model(self) -> dict:
        return self._request("GET", "/v1/model")

    def stats(self) -> dict:
        return self._request("GET", "/v1/stats")

    def score(self, features, *, layout: str | None = None, threshold: float | None = None,
              fps: float | None = None, as_json: bool = False) -> dict:
        """Score one video: an array (T, D), (T, C, D) or (C, T, D) (with layout "CTD" or when
        the server cannot tell), or the path of a .npy file (sent as is). Returns the server's
        answer, score / dfm / anomaly as float32 arrays (T,)."""
        query = {k: v for k, v in (("layout", layout), ("threshold", threshold), ("fps", fps)) if v is not None}
        if as_json:
            if isinstance(features, (str, os.PathLike)):
                features = np.load(features, allow_pickle=False)
            doc = {"features": np.asarray(features, dtype=np.float64).tolist(), **query}
            body, ctype, query = json.dumps(doc).encode(), "application/json", {}
        else:
            body, ctype = npy_bytes(features), "application/octet-stream"
        return _arrays(self._request("POST", "/v1/score", body=body, content_type=ctype, query=query))

    def open_stream(self, window: int = 64, lookahead: int = 0, step: int = 1) -> "Stream":
        doc = self._request("POST", "/v1/streams", body=json.dumps(
            {"window": window, "lookahead": lookahead, "step": step}).encode(), content_type="application/json")
        return Stream(self, doc)

    # -- plumbing ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                 query: dict | None = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        req = urllib.request.Request(url, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        req.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as e:
            raise ServerError(url, e.code, _message(e)) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (BrokenPipeError, ConnectionResetError)) and body is not None:
                raise ServerUnavailable(
                    f"{url}: the server closed the connection while {len(body)} bytes were sent "
                    f"({reason}); the body may be over its limit (GET /v1/model: limits)") from None
            raise ServerUnavailable(f"{url}: cannot reach bnwvad-serve ({reason})") from None
        except (ConnectionError, socket.timeout, TimeoutError) as e:
            raise ServerUnavailable(f"{url}: {type(e).__name__}: {e}") from None
        try:
            return json.loads(data)
        except ValueError:
            raise ClientError(f"{url}: the answer is not JSON ({data[:80]!r}); is this bnwvad-serve?") from None


def _message(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read()
    except Exception:               # noqa: BLE001 - the body could not be read
        raw = b""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict) and "error" in doc:
            return str(doc["error"])
    except ValueError:
        pass
    text = raw.decode("utf-8", "replace").strip()
    return text[:500] or (e.reason if isinstance(e.reason, str) else str(e))


class RemoteModel:
    """A bnwvad-serve's model as bnwvad-infer --server records it: the runner-like fields the
    run's summary.json reads (meta, backend, providers, ...) from GET /v1/model."""

    def __init__(self, client: Client, info: dict):
        from bnwvad.runtime.metadata import ModelMeta

        model = dict(info.get("model") or {})
        known = ("feature_dim", "crops", "frames_per_snippet", "precision", "opset", "version", "model_config",
                 "preset", "source_digest", "weights_digest", "anomaly", "checkpoint")
        self.meta = ModelMeta(source=client.url, **{k: model[k] for k in known if model.get(k) is not None})
        self.info = info
        self.backend = f"bnwvad-serve {client.url} ({info.get('backend')})"
        self.requested, self.providers, self.fallback = "server", list(info.get("providers") or []), False
        self.weights_digest = info.get("weights_digest") or self.meta.weights_digest

    def describe(self) -> str:
        return f"{self.backend}; the server's memory budget {self.info.get('memory_budget')}"

    def close(self) -> None:
        pass


class _ServerBudget:
    """The memory budget line of a --server run: the server's own, as GET /v1/model reports it."""

    def __init__(self, text):
        self.text = text

    def describe(self) -> str:
        return f"the server's ({self.text})"


class RemoteScorer:
    """The runtime Scorer's `iter_results` over bnwvad-serve: each video's features sent to the
    server (POST /v1/score), one request at a time; the answers as VideoResults. A video the
    server refuses (4xx: bad values, too long) or whose file cannot be read is a VideoFailure
    naming it; a server that cannot be reached raises ServerUnavailable (the run stops)."""

    def __init__(self, client: Client, model: RemoteModel):
        self.client, self.runner, self.meta = client, model, model.meta
        self.stats = {"calls": 0, "videos": 0}
        self.window = None
        self.budget = _ServerBudget(model.info.get("memory_budget"))

    def iter_results(self, sources, progress=None):
        from bnwvad.features import FeatureFileError
        from bnwvad.runtime.errors import InputError
        from bnwvad.runtime.sources import VideoFailure, VideoResult

        for s in sources:
            try:
                a = s.load()                      # (C, T, D) float32, checked where it entered
                doc = self.client.score(a, layout="CTD")
                self.stats["calls"] += 1
                self.stats["videos"] += 1
                yield VideoResult(s.name, *(np.asarray(doc[k], np.float32) for k in OUTPUTS), crops=int(a.shape[0]),
                                  frames_per_snippet=self.meta.frames_per_snippet)
            except ServerError as e:
                yield VideoFailure(s.name, InputError(f"video {s.name!r}: bnwvad-serve answered HTTP {e.status}: "
                                                      f"{e.message}"))
            except (FeatureFileError, InputError, OSError) as e:
                yield VideoFailure(s.name, e)
            if progress:
                progress(1)


class Stream:
    """A streaming session of bnwvad-serve (--streams): push snippets, close at the end."""

    def __init__(self, client: Client, doc: dict):
        self.client = client
        self.id = doc["id"]
        self.info = doc

    def push(self, snippets) -> dict:
        """(k, C, D) or (k, D) snippets -> {"snippet": (n,) int, score / dfm / anomaly (n,)} of
        the snippets that became final."""
        doc = self.client._request("POST", f"/v1/streams/{self.id}", body=npy_bytes(snippets),
                                   content_type="application/octet-stream")
        doc["snippet"] = np.asarray(doc.get("snippet", []), dtype=np.int64)
        return _arrays(doc)

    def close(self) -> dict:
        """End the stream: its remaining results."""
        doc = self.client._request("DELETE", f"/v1/streams/{self.id}")
        doc["snippet"] = np.asarray(doc.get("snippet", []), dtype=np.int64)
        return _arrays(doc)


__all__ = ["Client", "ClientError", "RemoteModel", "RemoteScorer", "ServerError", "ServerUnavailable", "Stream",
           "npy_bytes"]
