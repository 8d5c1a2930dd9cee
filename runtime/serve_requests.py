"""bnwvad-serve's requests: decoding bodies (numpy only), their limits, and the HTTP plumbing.

A body is the bytes of a .npy file or JSON; it is read as bnwvad-infer reads a file (the same
checks and messages, "request body" in place of the path): nothing is ever unpickled. Bad
requests raise RequestError (its HTTP status) or FeatureFileError / InputError (422); see
`error_status`. starlette (which Ray Serve brings) is imported only where an answer is made.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from bnwvad.features import FeatureFileError, checked_float32, read_npy_bytes

from .errors import InputError, MemoryBudgetError, human_bytes

# A body over the limit by at most this factor is read (and dropped) before the 413, so the client
# gets the answer instead of a reset connection; a larger one is refused without reading it.
DRAIN_FACTOR = 4
BODY_LABEL = "request body"
LAYOUTS = ("auto", "TD", "TCD", "CTD")
_F32_MAX = float(np.finfo(np.float32).max)


class RequestError(Exception):
    """A request the service answers with an error: HTTP status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = message


# -- decoding requests (numpy only) -------------------------------------------------------------
def arrange(label: str, raw: np.ndarray, layout: str, crops_hint: int | None) -> np.ndarray:
    """(T, D) -> (1, T, D); 3-D -> (C, T, D) by bnwvad-infer's layout rule (runtime.inputs)."""
    from .inputs import _layout_3d

    if layout not in LAYOUTS:
        raise RequestError(400, f"layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if raw.ndim == 2:
        return raw[None]
    try:
        lay = _layout_3d(label, tuple(raw.shape), layout, crops_hint)
    except FeatureFileError as e:       # its fix names the CLI's option; here it is a parameter
        raise FeatureFileError(str(e).replace("--layout ", "layout=")) from None
    if lay == "TCD":
        return raw.transpose(1, 0, 2)
    return raw


def decode_features(body: bytes, content_type: str, *, feature_dim: int | None, crops_hint: int | None,
                    layout: str = "auto", max_snippets: int | None = None
                    ) -> tuple[np.ndarray, dict]:
    """A /v1/score body -> ((C, T, D) float32, options from a JSON body). RequestError (400 /
    413) or FeatureFileError / InputError (422) otherwise."""
    options: dict = {}
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"{BODY_LABEL}: not valid JSON ({e}); expected "
                                    f'{{"features": [[...], ...], "layout": "TD"}}') from None
        if not isinstance(doc, dict) or "features" not in doc:
            raise RequestError(400, f'{BODY_LABEL}: a JSON {type(doc).__name__} without "features"; expected '
                                    f'{{"features": [[...], ...], "layout": "TD"}}')
        options = {k: doc[k] for k in ("layout", "threshold", "fps") if k in doc}
        layout = options.get("layout", layout)
        try:
            arr = np.array(doc["features"], dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise InputError(f"{BODY_LABEL}: features are not a rectangular array of numbers ({e}); "
                             f"expected nested lists of shape (T, D), (T, C, D) or (C, T, D)") from None
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        body = buf.getvalue()             # one path for both: the .npy checks and their messages
    elif ctype not in ("application/octet-stream", "application/x-npy", ""):
        raise RequestError(415, f"Content-Type {content_type!r}; expected application/octet-stream "
                                f"(the bytes of a .npy file) or application/json")
    raw = read_npy_bytes(body, label=BODY_LABEL, feature_dim=feature_dim)
    x = arrange(BODY_LABEL, raw, str(layout), crops_hint)          # a view: nothing copied yet
    if max_snippets is not None and x.shape[1] > max_snippets:
        raise RequestError(413, f"{BODY_LABEL}: T = {x.shape[1]} snippets (shape {raw.shape}) is over this "
                                f"server's limit of {max_snippets} snippets per video (--max-snippets). "
                                f"Fix: split the video, or ask for a larger limit")
    checked = checked_float32(raw, BODY_LABEL, InputError)      # indices in messages are the array's, as sent
    return np.ascontiguousarray(arrange(BODY_LABEL, checked, str(layout), crops_hint)), options


def decode_snippets(body: bytes, content_type: str, *, feature_dim: int | None) -> np.ndarray:
    """A stream push: .npy bytes or JSON {"snippets": [...]} of (k, C, D) or (k, D) -> the
    array (values are checked by the StreamGroup, per snippet)."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        try:
            doc = json.loads(body)
            arr = np.array(doc["snippets"], dtype=np.float64)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
            raise RequestError(400, f'{BODY_LABEL}: expected JSON {{"snippets": [[...], ...]}} of shape '
                                    f'(k, C, D) or (k, D) ({type(e).__name__}: {e})') from None
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        body = buf.getvalue()
    raw = read_npy_bytes(body, label=BODY_LABEL, feature_dim=feature_dim)
    if np.finfo(raw.dtype).max > _F32_MAX:
        checked_float32(raw, BODY_LABEL, InputError)
    return raw


def query_float(value, name: str, *, positive: bool = False) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"{name} = {value!r}; expected a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise RequestError(400, f"{name} = {value!r}; expected a finite{' positive' if positive else ''} number")
    return v


def error_status(exc: BaseException) -> int:
    """The HTTP status of an exception raised while serving a request."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, MemoryBudgetError):
        return 413
    if isinstance(exc, (FeatureFileError, InputError)):
        return 422
    return 500


# -- HTTP plumbing (starlette, which Ray Serve brings) -----------------------------------------
def json_response(data: Any, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(data, allow_nan=False, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def error_response(status: int, message: str):
    return json_response({"error": message, "status": int(status)}, status)


async def read_body(request, limit: int) -> bytes:
    """The request's body, at most `limit` bytes, else RequestError 413 naming the limit. A body
    over the limit by at most DRAIN_FACTOR is read through (and dropped) first, so the client
    reads the 413 instead of a reset connection."""
    declared = request.headers.get("content-length")
    too_big = None
    if declared is not None:
        try:
            too_big = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r}; expected a number of bytes") from None
        if too_big <= limit:
            too_big = None
    chunks = request.stream().__aiter__()
    buf = bytearray()
    seen = 0
    if too_big is None:
        async for chunk in chunks:
            buf += chunk
            if len(buf) > limit:
                too_big = seen = len(buf)
                buf = bytearray()
                break
        else:
            return bytes(buf)
    if too_big <= DRAIN_FACTOR * limit:
        try:
            async for chunk in chunks:
                seen += len(chunk)
                if seen > DRAIN_FACTOR * limit:
                    break
        except Exception:                  # noqa: BLE001 - disconnected meanwhile
            pass
    raise RequestError(413, f"{BODY_LABEL} of {too_big} bytes{'' if declared else ' or more'} is over this "
                            f"server's limit of {limit} bytes ({human_bytes(limit)}, --max-body-mb). Fix: "
                            f"send a shorter video (split it), or ask for a larger limit")


def route_parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


__all__ = ["BODY_LABEL", "DRAIN_FACTOR", "LAYOUTS", "RequestError", "arrange", "decode_features",
           "decode_snippets", "error_response", "error_status", "json_response", "query_float", "read_body",
           "read_npy_bytes", "route_parts"]
