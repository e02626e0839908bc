"""GPU allocation: which student's server holds which GPU (or MIG slice), fairly and durably.

No Jupyter library assigns GPUs to DockerSpawner containers (KubeSpawner leaves it to the
Kubernetes device plugin), so this module is ours. The operator lists the host's devices, each
with a mode:

- ``exclusive``: one student per device (a whole GPU);
- ``shared``: at most ``max_users`` students, time-sliced, with no memory isolation;
- ``mig``: a MIG slice (its UUID), one student per slice.

``acquire`` gives a student the least-loaded device of the modes a profile allows (load =
users / capacity, then fewest users, then the operator's order), never beyond capacity.
Allocations and usage periods live in SQLite on the hub's state volume, so a hub restart keeps
them; ``reconcile`` then drops allocations whose containers are gone and adopts GPU containers
that run without one. Every allocation's period is recorded, so staff can see GPU hours.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Iterable

MODES = ("exclusive", "shared", "mig")


@dataclass(frozen=True)
class Device:
    """One allocatable GPU device: an index, a GPU UUID or a MIG slice UUID."""

    id: str
    mode: str
    max_users: int = 1
    node: str = ""  # in a swarm: the id of the node that has it (hub.swarm); "" on one host

    @classmethod
    def from_setting(cls, entry: dict) -> "Device":
        """A device from one ``gpus.devices`` entry of lab.yaml."""
        return cls(str(entry["id"]), entry["mode"], int(entry.get("max_users", 1)))

    @property
    def capacity(self) -> int:
        return self.max_users if self.mode == "shared" else 1


class NoDeviceFree(Exception):
    """Every device a profile may use is full."""

    def __init__(self, free: int, total: int):
        self.free, self.total = free, total
        super().__init__(f"no GPU is free ({free} of {total} GPU slots free)")


class NoDeviceConfigured(Exception):
    """The operator configured no device of the modes a profile needs."""


class Allocator:
    """Thread-safe GPU allocator backed by SQLite (``path`` may be ':memory:')."""

    def __init__(self, devices: Iterable[Device], path: str = ":memory:", clock=time.time):
        self.devices = list(devices)
        self._by_id = {d.id: d for d in self.devices}
        if len(self._by_id) != len(self.devices):
            raise ValueError("GPU device ids must be unique")
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS allocations (
                user TEXT PRIMARY KEY, device TEXT NOT NULL, profile TEXT NOT NULL, since REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS usage (
                user TEXT NOT NULL, device TEXT NOT NULL, profile TEXT NOT NULL,
                start REAL NOT NULL, end REAL);
            """
        )

    def set_devices(self, devices: Iterable[Device]) -> None:
        """Replace the devices (a swarm's nodes come and go). Allocations stay; a device that is
        gone is no longer given to anyone, and its holders keep it until they stop."""
        devices = list(devices)
        by_id = {d.id: d for d in devices}
        if len(by_id) != len(devices):
            raise ValueError("GPU device ids must be unique")
        with self._lock:
            self.devices, self._by_id = devices, by_id

    # -- queries -----------------------------------------------------------------------------

    def allocations(self) -> dict[str, str]:
        """Current allocations: user -> device id."""
        with self._lock:
            return dict(self._db.execute("SELECT user, device FROM allocations").fetchall())

    def device_of(self, user: str) -> str | None:
        return self.allocations().get(user)

    def users_on(self, device_id: str) -> int:
        return sum(1 for d in self.allocations().values() if d == device_id)

    def eligible(self, modes: Iterable[str]) -> list[Device]:
        modes = set(modes)
        return [d for d in self.devices if d.mode in modes]

    def availability(self, modes: Iterable[str]) -> tuple[int, int]:
        """(free slots, total slots) over the devices of the given modes."""
        devices = self.eligible(modes)
        counts = self._counts()
        total = sum(d.capacity for d in devices)
        used = sum(min(counts.get(d.id, 0), d.capacity) for d in devices)
        return total - used, total

    def usage(self) -> list[dict]:
        """Every allocation period, open ones up to now, with hours."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT user, device, profile, start, end FROM usage ORDER BY start"
            ).fetchall()
        return [
            {"user": u, "device": d, "profile": p, "start": s, "end": e,
             "hours": ((e if e is not None else now) - s) / 3600}
            for u, d, p, s, e in rows
        ]

    def hours_by_user(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for row in self.usage():
            totals[row["user"]] = totals.get(row["user"], 0.0) + row["hours"]
        return totals

    # -- changes -----------------------------------------------------------------------------

    def _counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for device in self.allocations().values():
            counts[device] = counts.get(device, 0) + 1
        return counts

    def acquire(self, user: str, profile: str, modes: Iterable[str]) -> Device:
        """Give ``user`` the least-loaded device of ``modes``; the same one if they hold one already."""
        modes = tuple(modes)
        with self._lock:
            held = self.device_of(user)
            if held is not None and held in self._by_id and self._by_id[held].mode in modes:
                return self._by_id[held]
            if held is not None:
                self.release(user)
            devices = self.eligible(modes)
            if not devices:
                raise NoDeviceConfigured(f"no GPU device of mode {' or '.join(modes)} is configured")
            counts = self._counts()
            free = [d for d in devices if counts.get(d.id, 0) < d.capacity]
            if not free:
                raise NoDeviceFree(*self.availability(modes))
            order = {d.id: i for i, d in enumerate(self.devices)}
            best = min(free, key=lambda d: (counts.get(d.id, 0) / d.capacity, counts.get(d.id, 0), order[d.id]))
            now = self._clock()
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO allocations VALUES (?, ?, ?, ?)", (user, best.id, profile, now))
            self._db.execute("INSERT INTO usage VALUES (?, ?, ?, ?, NULL)", (user, best.id, profile, now))
            self._db.execute("COMMIT")
            return best

    def release(self, user: str) -> str | None:
        """Free ``user``'s device, close their usage period; return the device id (None if none)."""
        with self._lock:
            held = self.device_of(user)
            if held is None:
                return None
            now = self._clock()
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM allocations WHERE user = ?", (user,))
            self._db.execute("UPDATE usage SET end = ? WHERE user = ? AND end IS NULL", (now, user))
            self._db.execute("COMMIT")
            return held

    def reconcile(self, running: dict[str, tuple[str, str]]) -> dict[str, list[str]]:
        """Match allocations with the GPU containers that really run.

        ``running`` maps user -> (device id, profile) for every running student container that
        holds a GPU. Allocations without a running container are released; running containers
        without an allocation are adopted (if the device is still configured). Returns what changed.
        """
        released, adopted = [], []
        with self._lock:
            current = self.allocations()
            for user, device in current.items():
                if running.get(user, (None,))[0] != device:
                    self.release(user)
                    released.append(user)
            current = self.allocations()
            for user, (device, profile) in running.items():
                if user not in current and device in self._by_id:
                    now = self._clock()
                    self._db.execute("BEGIN")
                    self._db.execute("INSERT INTO allocations VALUES (?, ?, ?, ?)", (user, device, profile, now))
                    self._db.execute("INSERT INTO usage VALUES (?, ?, ?, ?, NULL)", (user, device, profile, now))
                    self._db.execute("COMMIT")
                    adopted.append(user)
        return {"released": released, "adopted": adopted}
