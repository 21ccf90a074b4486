"""What the HTTP/2 codec reports from the server's bytes (``ClientCodec.receive``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(slots=True)
class Response:
    """A whole answer: the stream ended with it."""

    stream_id: int
    status_code: int
    headers: Mapping[str, str]  # values are decoded when read (headers.py)
    content: bytes


@dataclass(slots=True)
class StreamReset:
    """The stream ended without an answer: reset by the server, or by us for a malformed
    answer. ``unsent``: the server says it did not process the request (REFUSED_STREAM),
    so it can be sent again without being delivered twice."""

    stream_id: int
    error_code: int
    reason: str
    unsent: bool = False


@dataclass(slots=True)
class GoAway:
    """The server takes no new streams; those above ``last_stream_id`` were not processed
    (``unprocessed``: they are closed here and may be sent again elsewhere)."""

    last_stream_id: int
    error_code: int
    debug_data: bytes
    unprocessed: list[int]


@dataclass(slots=True)
class SettingsChanged:
    changed: dict[int, int]
    first: bool  # the server's connection preface: the connection can take requests now


@dataclass(slots=True)
class PingAcknowledged:
    payload: bytes


@dataclass(slots=True)
class ConnectionTerminated:
    """The server broke the protocol: GOAWAY with ``error_code`` is queued, and the open
    streams (``stream_ids``) have failed; the server may have processed them."""

    error_code: int
    reason: str
    stream_ids: list[int]


Event = Response | StreamReset | GoAway | SettingsChanged | PingAcknowledged | ConnectionTerminated
