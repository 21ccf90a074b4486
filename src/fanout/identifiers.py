"""What a user's external id and a topic key may be: one rule, used by the API's schemas
and by the bulk import (fanout.bulk), so a row the API would refuse is never imported.

Documented character sets: what may appear in a URL path segment without escaping (both
are path parameters of the API), at most 128 characters.
"""

from __future__ import annotations

import re

TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"

# A device's fields, as POST /v1/devices (api/schemas.py's DeviceIn) and the bulk import's
# fast path (bulk/rows.py) check them. Printable ASCII for tokens and endpoints: a NUL
# reached PostgreSQL, which refuses it in text, as a 500 (found by the OpenAPI fuzz).
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*$"
APNS_TOKEN_PATTERN = r"^([0-9a-fA-F]{2}){8,100}$"  # noqa: S105 - a pattern, not a secret
FCM_TOKEN_PATTERN = r"^[\x21-\x7e]{1,4096}$"  # noqa: S105 - a pattern, not a secret
WEB_PUSH_ENDPOINT_PATTERN = r"^https://[\x21-\x7e]+$"
WEB_PUSH_ENDPOINT_MAX = 2048
BASE64URL_PATTERN = r"^[A-Za-z0-9_\-]+=*$"
BASE64URL_MAX = 256

_TOPIC = re.compile(TOPIC_PATTERN)
_USER_ID = re.compile(USER_ID_PATTERN)


def is_topic_key(value: str) -> bool:
    """Whether ``value`` is a valid topic key (``TOPIC_PATTERN``)."""
    return _TOPIC.fullmatch(value) is not None


def is_user_id(value: str) -> bool:
    """Whether ``value`` is a valid external user id (``USER_ID_PATTERN``)."""
    return _USER_ID.fullmatch(value) is not None
