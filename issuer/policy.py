"""What the issuer grants a card: credential lifetime, limits, clock tolerance.

Stored in the registry (so every process of one issuer applies the same
rules) and checked for consistency before it is used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from issuer.errors import IssuerError

DAY = 86_400
_U32 = 1 << 32


@dataclass(frozen=True, slots=True)
class Policy:
    """Amounts are minor units of ``currency`` (ISO 4217 numeric); times are seconds."""

    currency: int = 978
    max_balance: int = 100_000
    credential_lifetime: int = 7 * DAY
    offline_cap: int = 20_000
    per_payment_limit: int = 10_000
    no_pin_limit: int = 2_500
    tolerance: int = 600
    certificate_lifetime: int = 4 * 365 * DAY

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _U32:
                raise IssuerError(f"policy: {f.name} must be a whole number from 0 to 2^32-1")
        if not 0 < self.currency <= 999:
            raise IssuerError("policy: currency is an ISO 4217 number from 1 to 999")
        if self.max_balance == 0 or self.credential_lifetime == 0:
            raise IssuerError("policy: max_balance and credential_lifetime must not be zero")
        if self.no_pin_limit > self.per_payment_limit:
            raise IssuerError("policy: no_pin_limit must not exceed per_payment_limit")
        if self.per_payment_limit > self.offline_cap:
            raise IssuerError("policy: per_payment_limit must not exceed offline_cap")
        if self.certificate_lifetime < self.credential_lifetime:
            raise IssuerError("policy: certificates must outlive credentials")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Policy:
        try:
            values = json.loads(text)
            known = {f.name for f in fields(cls)}
            if not isinstance(values, dict) or not set(values) <= known:
                raise TypeError
            return cls(**values)
        except (ValueError, TypeError):
            raise IssuerError("policy: not a policy object") from None
