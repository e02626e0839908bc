"""The GPU allocator: capacity, release, persistence and reconciliation, fairness, modes."""

from hypothesis import given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import pytest

from hub.gpu import Allocator, Device, NoDeviceConfigured, NoDeviceFree

SHARED = ("shared", "mig")
WHOLE = ("exclusive",)


def mixed_devices():
    return [
        Device("0", "exclusive"),
        Device("1", "shared", 3),
        Device("GPU-aaaa", "shared", 2),
        Device("MIG-1111", "mig"),
        Device("MIG-2222", "mig"),
    ]


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def test_shared_spreads_to_least_loaded():
    """Shared spawns go to the least-loaded device, relative to its capacity."""
    a = Allocator([Device("1", "shared", 4), Device("2", "shared", 4)])
    got = [a.acquire(f"u{i}", "gpu-shared", SHARED).id for i in range(4)]
    assert sorted(got) == ["1", "1", "2", "2"]


def test_exclusive_and_mig_take_one_student_each():
    """A whole GPU or a MIG slice never holds two students."""
    a = Allocator([Device("0", "exclusive"), Device("MIG-1", "mig")])
    assert a.acquire("u1", "gpu-whole", WHOLE).id == "0"
    with pytest.raises(NoDeviceFree) as info:
        a.acquire("u2", "gpu-whole", WHOLE)
    assert (info.value.free, info.value.total) == (0, 1)
    assert a.acquire("u3", "gpu-shared", SHARED).id == "MIG-1"
    with pytest.raises(NoDeviceFree):
        a.acquire("u4", "gpu-shared", SHARED)


def test_release_frees_the_slot_and_records_hours():
    """Releasing frees the device; the period's hours are recorded for staff."""
    clock = Clock()
    a = Allocator([Device("0", "exclusive")], clock=clock)
    a.acquire("s1", "gpu-whole", WHOLE)
    clock.now += 5400
    assert a.release("s1") == "0"
    assert a.availability(WHOLE) == (1, 1)
    assert a.hours_by_user() == {"s1": pytest.approx(1.5)}
    assert a.acquire("s2", "gpu-whole", WHOLE).id == "0"


def test_same_student_keeps_their_device():
    """Asking twice gives the same device, not a second one."""
    a = Allocator([Device("1", "shared", 2), Device("2", "shared", 2)])
    first = a.acquire("s1", "gpu-shared", SHARED)
    assert a.acquire("s1", "gpu-shared", SHARED) == first
    assert len(a.allocations()) == 1


def test_no_device_of_a_mode():
    """A profile whose kind has no device says so."""
    with pytest.raises(NoDeviceConfigured):
        Allocator([Device("MIG-1", "mig")]).acquire("s1", "gpu-whole", WHOLE)


def test_allocations_survive_a_restart_and_reconcile(tmp_path):
    """A new allocator on the same file sees the allocations; reconcile fixes drift both ways."""
    path = str(tmp_path / "gpu.sqlite")
    a = Allocator(mixed_devices(), path)
    a.acquire("s1", "gpu-shared", SHARED)
    a.acquire("s2", "gpu-whole", WHOLE)
    b = Allocator(mixed_devices(), path)
    assert b.allocations() == a.allocations()
    # s1's container is gone, s9 runs on MIG-2222 without an allocation.
    changes = b.reconcile({"s2": ("0", "gpu-whole"), "s9": ("MIG-2222", "gpu-shared")})
    assert changes == {"released": ["s1"], "adopted": ["s9"]}
    assert b.allocations() == {"s2": "0", "s9": "MIG-2222"}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acquire-shared", "acquire-whole", "release"]),
                          st.integers(0, 12)), max_size=60))
def test_never_oversubscribed(ops):
    """Whatever students do, no device holds more students than its capacity."""
    a = Allocator(mixed_devices())
    caps = {d.id: d.capacity for d in mixed_devices()}
    for op, n in ops:
        user = f"s{n}"
        try:
            if op == "release":
                a.release(user)
            else:
                a.acquire(user, op, SHARED if op == "acquire-shared" else WHOLE)
        except NoDeviceFree:
            free, _total = a.availability(SHARED if op == "acquire-shared" else WHOLE)
            assert free == 0
        counts = {}
        for device in a.allocations().values():
            counts[device] = counts.get(device, 0) + 1
        assert all(counts[d] <= caps[d] for d in counts)


class FairSpread(RuleBasedStateMachine):
    """Shared devices stay within one student of each other (relative to equal capacity)."""

    def __init__(self):
        super().__init__()
        self.a = Allocator([Device(str(i), "shared", 4) for i in range(3)])
        self.users = set()
        self.n = 0

    @rule()
    def arrive(self):
        self.n += 1
        try:
            self.a.acquire(f"s{self.n}", "gpu-shared", SHARED)
            self.users.add(f"s{self.n}")
        except NoDeviceFree:
            assert len(self.users) == 12

    @rule(data=st.data())
    def leave(self, data):
        if self.users:
            user = data.draw(st.sampled_from(sorted(self.users)))
            self.a.release(user)
            self.users.discard(user)

    @invariant()
    def within_capacity(self):
        loads = [self.a.users_on(str(i)) for i in range(3)]
        assert max(loads) <= 4

    @invariant()
    def every_student_is_counted_once(self):
        loads = [self.a.users_on(str(i)) for i in range(3)]
        assert sum(loads) == len(self.users)


TestFairSpread = FairSpread.TestCase


@given(st.lists(st.integers(0, 2), max_size=12))
def test_arrival_picks_a_least_loaded_device(preload):
    """Whatever the current loads, a new student lands on a device with the fewest students."""
    a = Allocator([Device(str(i), "shared", 8) for i in range(3)])
    for i, device in enumerate(preload):
        # place students directly on a device to create arbitrary load
        a.reconcile({**{u: (d, "p") for u, d in a.allocations().items()}, f"x{i}": (str(device), "p")})
    loads = {str(i): a.users_on(str(i)) for i in range(3)}
    got = a.acquire("new", "gpu-shared", SHARED).id
    assert loads[got] == min(loads.values())
