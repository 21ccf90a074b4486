"""fanout's HTTP/2 client for push services (see ``client``)."""

from fanout.providers.h2.client import H2Client, H2Error, H2Response

__all__ = ["H2Client", "H2Error", "H2Response"]
