"""A lease per store and model version: one refresh at a time, a clear error for a second one.

    with hold_lease(store_url, version, holder="<flow run id>"):
        ...plan, embed, commit, publish...

The lease is ``<store>/<version>/_LEASE``, JSON ``{holder, host, pid, since, expires}``. Taking it is a
create-only put; a lease that expired, or whose holder process is dead on this same host, is taken over
by compare-and-swap. A heartbeat thread renews it (compare-and-swap) every third of its time to live and
the holder deletes it at the end, if it is still its own. A second run meets :class:`StoreBusy` naming the
holder. The lease only turns a race into a clear error: segments, the catalog and the index pointer stay
safe without it (create-only commits and compare-and-swap).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from clothret.errors import StoreBusy
from clothret.store.cas import delete_if_match, put_if_match, read_versioned
from clothret.store.feature_store import version_url
from clothret.store.writer import iso, process_is_dead, utc_now, writer_info

logger = logging.getLogger(__name__)

LEASE = "_LEASE"
TTL_ENV = "CLOTHRET_LEASE_TTL_S"
DEFAULT_TTL_S = 600.0
_TAKE_TRIES = 5


def lease_url(store_url: str, version: str) -> str:
    return f"{version_url(store_url, version)}/{LEASE}"


def lease_ttl_s() -> float:
    """The lease's time to live: ``CLOTHRET_LEASE_TTL_S`` or 600 s."""
    raw = os.environ.get(TTL_ENV)
    if not raw:
        return DEFAULT_TTL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{TTL_ENV}={raw!r}: the lease's time to live must be a positive number of seconds")
    return value


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as stored."""

    holder: str
    host: str
    pid: int
    since: str
    expires: str

    @classmethod
    def parse(cls, data: bytes) -> LeaseInfo | None:
        try:
            raw = json.loads(data)
            return cls(str(raw["holder"]), str(raw["host"]), int(raw["pid"]), str(raw["since"]), str(raw["expires"]))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
            return None

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()

    def expired(self, now: dt.datetime | None = None) -> bool:
        return dt.datetime.fromisoformat(self.expires) <= (now or utc_now())

    def holder_is_dead(self) -> bool:
        return process_is_dead(self.host, self.pid)

    def describe(self) -> str:
        return f"run {self.holder} on host {self.host} (pid {self.pid}) since {self.since}"


def read_lease(store_url: str, version: str) -> LeaseInfo | None:
    """The lease on a store's model version, or ``None`` when nobody holds one."""
    data, _ = read_versioned(lease_url(store_url, version))
    return None if data is None else LeaseInfo.parse(data)


def lease_blocks(lease: LeaseInfo | None) -> bool:
    """Whether a lease keeps others out now: present, not expired, and its holder not known to be dead."""
    return lease is not None and not lease.expired() and not lease.holder_is_dead()


class HeldLease:
    """A lease this process holds; :meth:`renew` extends it, :meth:`release` gives it up."""

    def __init__(self, url: str, info: LeaseInfo, token: str | None, ttl_s: float):
        self.url, self.info, self.token, self.ttl_s = url, info, token, ttl_s
        self.lost = False
        self._lock = threading.Lock()

    def renew(self) -> bool:
        """Push the expiry ``ttl_s`` ahead (compare-and-swap); False (and ``lost``) when it was taken over."""
        with self._lock:
            if self.lost:
                return False
            info = LeaseInfo(self.info.holder, self.info.host, self.info.pid, self.info.since,
                             iso(utc_now() + dt.timedelta(seconds=self.ttl_s)))
            if put_if_match(self.url, info.to_json(), self.token):
                self.info, self.token = info, read_versioned(self.url)[1]
                return True
            self.lost = True
            data, _ = read_versioned(self.url)
            other = LeaseInfo.parse(data) if data else None
            logger.error("lease %s was taken over%s: the catalog and index pointer stay safe by compare-and-swap",
                         self.url, f" by {other.describe()}" if other else "")
            return False

    def release(self) -> None:
        """Delete the lease if it is still this one."""
        with self._lock:
            if self.lost or self.token is None:
                return
            if delete_if_match(self.url, self.token):
                logger.info("released lease %s", self.url)
            else:
                logger.warning("lease %s was no longer ours at release: left as it is", self.url)
            self.lost = True


def _fresh(holder: str, ttl_s: float) -> LeaseInfo:
    me, now = writer_info(holder), utc_now()
    return LeaseInfo(holder, me["host"], me["pid"], iso(now), iso(now + dt.timedelta(seconds=ttl_s)))


def acquire_lease(store_url: str, version: str, holder: str, *, ttl_s: float | None = None) -> HeldLease:
    """Take the lease on a store's model version, or raise :class:`StoreBusy` naming who holds it.

    A lease that expired, whose holder process died on this host, or that this same process holds under
    the same holder name, is taken over.
    """
    ttl_s = ttl_s if ttl_s is not None else lease_ttl_s()
    url = lease_url(store_url, version)
    for _ in range(_TAKE_TRIES):
        data, token = read_versioned(url)
        current = LeaseInfo.parse(data) if data is not None else None
        mine = _fresh(holder, ttl_s)
        if data is not None and current is not None and lease_blocks(current):
            same = (current.holder, current.host, current.pid) == (holder, mine.host, mine.pid)
            if not same:
                raise StoreBusy(
                    f"store {store_url} version {version} is being refreshed by {current.describe()}; it expires "
                    f"at {current.expires} unless renewed (lease {url})"
                )
        if data is not None:
            why = "unreadable" if current is None else "expired" if current.expired() else \
                "left by a dead process" if current.holder_is_dead() else "held by this process"
            logger.warning("taking over lease %s (%s)%s", url, why, f": was {current.describe()}" if current else "")
        if put_if_match(url, mine.to_json(), token):
            held = HeldLease(url, mine, read_versioned(url)[1], ttl_s)
            logger.info("holding lease %s until %s (renewed every %.0f s)", url, mine.expires, ttl_s / 3)
            return held
    raise StoreBusy(f"store {store_url} version {version}: the lease {url} changed hands {_TAKE_TRIES} times "
                    f"while this run tried to take it; try again")


def _heartbeat(held: HeldLease, stop: threading.Event) -> None:
    while not stop.wait(held.ttl_s / 3):
        try:
            if not held.renew():
                return
        except Exception as exc:  # noqa: BLE001 - a failed renewal is retried on the next beat
            logger.warning("could not renew lease %s: %r", held.url, exc)


@contextmanager
def hold_lease(store_url: str, version: str, holder: str, *, ttl_s: float | None = None) -> Iterator[HeldLease]:
    """Hold the lease of a store's model version for the body of a ``with``, renewed in the background."""
    held = acquire_lease(store_url, version, holder, ttl_s=ttl_s)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(held, stop), name=f"lease-{version}", daemon=True)
    beat.start()
    try:
        yield held
    finally:
        stop.set()
        beat.join(timeout=30)
        try:
            held.release()
        except Exception as exc:  # noqa: BLE001 - an unreleased lease expires by itself
            logger.warning("could not release lease %s (it expires at %s): %r", held.url, held.info.expires, exc)
