"""Segment's ``integrations`` object: whether a message turns the CleverTap destination off. Pure.

**Decision:** as Segment reads it: ``"CleverTap": false``, or ``"All": false`` without ``"CleverTap"`` named.
Only ``false`` turns a destination off; ``true`` or an options object turn it on, and the name must match exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INTEGRATION_NAME = "CleverTap"
"""The destination's name in Segment's ``integrations`` object."""


def turned_off(integrations: Any) -> bool:
    """Whether ``integrations`` turns CleverTap off for this message."""
    if integrations is None or not (integrations.__class__ is dict or isinstance(integrations, Mapping)):
        return False
    own = integrations.get(INTEGRATION_NAME)
    return own is False if own is not None else integrations.get("All") is False
