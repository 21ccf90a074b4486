"""fanout's HTTP/2 client for push services: ``frames`` (wire vocabulary), ``codec``
(one connection's protocol, sans I/O) and the ``events`` it reports, ``connection`` (its
asyncio shell), ``client`` (pools of connections per origin)."""

from fanout.providers.h2.client import H2Client
from fanout.providers.h2.connection import H2Error, InvalidRequest, NotHttp2
from fanout.providers.h2.events import Response

__all__ = ["H2Client", "H2Error", "InvalidRequest", "NotHttp2", "Response"]
