"""Which buckets a call is counted in: pure functions of the caller and the default limits."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute

from app.auth.service import Principal


@dataclass(frozen=True, slots=True)
class Bucket:
    """One window of one limit for one caller; `cost` is what an admitted call adds to it."""

    item: RateLimitItem
    ids: tuple[str, ...]
    # 0 for the token bucket: a call only needs room left; its tokens are added after it ends.
    cost: int
    what: str

    @property
    def key(self) -> str:
        """limits' key for this bucket (user and key ids only: never a credential)."""
        return self.item.key_for(*self.ids)

    @property
    def tokens(self) -> bool:
        return self.cost == 0


@dataclass(frozen=True, slots=True)
class Usage:
    """How full a bucket is, and in how many seconds its window frees."""

    used: int
    reset_in: float

    def blocks(self, bucket: Bucket) -> bool:
        """Whether this usage leaves no room for the call."""
        return self.used + max(bucket.cost, 1) > bucket.item.amount


class Windows:
    """The default limits, and the buckets they give a caller once their overrides apply."""

    def __init__(self, *, prefix: str, rpm: int, rph: int, tpm: int) -> None:
        self._prefix = prefix
        self._rpm, self._rph, self._tpm = rpm, rph, tpm
        self._items: dict[tuple[int, str], RateLimitItem] = {}

    def buckets(self, principal: Principal, *, reads: bool) -> list[Bucket]:
        """The user's minute, hour and token windows, and the key's own window if it has one."""
        # Every key of one user hashes to one Redis slot ({user}), so the script works on a cluster.
        user: tuple[str, ...] = (self._prefix, "user", "{" + quote(principal.user_id, safe="") + "}")
        rpm = self._rpm if principal.rpm_limit is None else principal.rpm_limit
        rph = self._rph if principal.rph_limit is None else principal.rph_limit
        tpm = self._tpm if principal.tpm_limit is None else principal.tpm_limit
        if reads:
            # Reads (balance, models) count apart: checking a balance never costs a model call,
            # and a model call's 429 never hides the balance.
            user = (*user, "reads")
        out: list[Bucket] = []
        # 0 switches a window off, as RATE_LIMIT_TOKENS_PER_MINUTE=0 does.
        if rpm > 0:
            out.append(Bucket(self._item(rpm, "minute"), user, 1, "requests per minute"))
        if rph > 0:
            out.append(Bucket(self._item(rph, "hour"), user, 1, "requests per hour"))
        if reads:
            return out
        # A key with a limit of its own has a bucket of its own too, inside the user's. Principal
        # does not carry the key's own limit yet (its rpm_limit is the key's if set, else the
        # user's); read it when it does.
        key_rpm = principal.key_rpm_limit
        if isinstance(key_rpm, int) and key_rpm > 0 and principal.key_id:
            ids = (*user, "key", quote(principal.key_id, safe=""))
            out.append(Bucket(self._item(key_rpm, "minute"), ids, 1, "requests per minute on this key"))
        if tpm > 0:
            out.append(Bucket(self._item(tpm, "minute"), (*user, "tokens"), 0, "tokens per minute"))
        return out

    def _item(self, amount: int, per: str) -> RateLimitItem:
        item = self._items.get((amount, per))
        if item is None:
            item = RateLimitItemPerMinute(amount) if per == "minute" else RateLimitItemPerHour(amount)
            self._items[(amount, per)] = item
        return item
