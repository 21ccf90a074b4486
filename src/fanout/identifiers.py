"""What a user's external id and a topic key may be: one rule, used by the API's schemas
and by the bulk import (fanout.bulk), so a row the API would refuse is never imported.

Documented character sets: what may appear in a URL path segment without escaping (both
are path parameters of the API), at most 128 characters.
"""

from __future__ import annotations

import re

TOPIC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$"

_TOPIC = re.compile(TOPIC_PATTERN)
_USER_ID = re.compile(USER_ID_PATTERN)


def is_topic_key(value: str) -> bool:
    """Whether ``value`` is a valid topic key (``TOPIC_PATTERN``)."""
    return _TOPIC.fullmatch(value) is not None


def is_user_id(value: str) -> bool:
    """Whether ``value`` is a valid external user id (``USER_ID_PATTERN``)."""
    return _USER_ID.fullmatch(value) is not None
