"""How a callback is signed: HMAC-SHA256 over `timestamp + "." + body` with the tenant's key,
sent as `cpa-signature: t=<unix seconds>,v1=<hex>` next to `cpa-key-id`.

Receivers check it with the recipe of docs/CALLBACKS.md ("Verifying a callback"); the tests
verify every delivery with that recipe, taken from the page itself.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "cpa-signature"
KEY_ID_HEADER: Final = "cpa-key-id"
DELIVERY_ID_HEADER: Final = "cpa-delivery-id"
EVENT_TYPE_HEADER: Final = "cpa-event-type"
ATTEMPT_HEADER: Final = "cpa-attempt"


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The value of the cpa-signature header for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"
