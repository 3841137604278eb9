from __future__ import annotations

import itertools
import random
from collections.abc import Hashable

import pytest

from tests.support.clock import FakeClock
from vdsm_imageio.http.admission import BUDGET, PER_PEER, Admission, Eviction, peer_group

# Connections are whatever the server hashes: names here, numbers in bulk.
Conn = Hashable


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def admission(
    clock: FakeClock, authorized: int = 4, unauthenticated: int = 6, per_peer: int = 3
) -> Admission[Conn]:
    return Admission(
        max_authorized=authorized,
        max_unauthenticated=unauthenticated,
        max_per_peer=per_peer,
        clock=clock,
    )


def fill(adm: Admission[Conn], clock: FakeClock, names: list[str], peer: str) -> None:
    for name in names:
        assert adm.admit(name, peer) is None
        clock.tick(1)


def evicting(adm: Admission[Conn], conn: Conn, peer: str) -> Eviction[Conn]:
    """admit() where it must evict someone."""
    evicted = adm.admit(conn, peer)
    assert evicted is not None
    return evicted


def test_admitting_under_the_limits_evicts_nobody(clock: FakeClock) -> None:
    adm = admission(clock)
    fill(adm, clock, ["a", "b", "c"], "10.0.0.1")
    fill(adm, clock, ["d", "e", "f"], "10.0.0.2")
    assert adm.unauthenticated == 6


def test_full_budget_evicts_the_oldest_unauthenticated_connection(clock: FakeClock) -> None:
    adm = admission(clock)
    fill(adm, clock, ["a", "b", "c"], "10.0.0.1")
    fill(adm, clock, ["d", "e", "f"], "10.0.0.2")
    evicted = adm.admit("g", "10.0.0.3")
    assert evicted is not None
    assert (evicted.conn, evicted.peer, evicted.reason, evicted.limit) == (
        "a",
        "10.0.0.1",
        BUDGET,
        6,
    )
    assert evicted.age == 6.0
    assert adm.unauthenticated == 6
    # The newcomer is kept: it is the youngest, evicted last.
    newer = [adm.admit(n, f"10.0.1.{i}") for i, n in enumerate("hijkl")]
    assert [e.conn for e in newer if e] == ["b", "c", "d", "e", "f"]
    assert evicting(adm, "m", "10.0.0.4").conn == "g"


def test_full_peer_cap_evicts_that_peers_oldest_only(clock: FakeClock) -> None:
    adm = admission(clock)
    fill(adm, clock, ["other"], "10.0.0.9")
    fill(adm, clock, ["a", "b", "c"], "10.0.0.1")
    evicted = adm.admit("d", "10.0.0.1")
    assert evicted is not None
    assert (evicted.conn, evicted.reason, evicted.limit) == ("a", PER_PEER, 3)
    assert adm.waiting("10.0.0.1") == 3
    assert adm.waiting("10.0.0.9") == 1


def test_peer_cap_eviction_frees_a_budget_slot_so_one_admission_evicts_one(
    clock: FakeClock,
) -> None:
    adm = admission(clock, unauthenticated=4, per_peer=2)
    fill(adm, clock, ["a", "b"], "p1")
    fill(adm, clock, ["c", "d"], "p2")
    evicted = adm.admit("e", "p2")
    assert evicted is not None and evicted.conn == "c"
    assert adm.unauthenticated == 4


def test_admission_never_refuses_and_never_exceeds_the_limits(clock: FakeClock) -> None:
    adm = admission(clock, unauthenticated=64, per_peer=16)
    rng = random.Random(7)
    live: set[int] = set()
    for i in range(5000):
        peer = f"127.0.0.{rng.randint(1, 9)}"
        evicted = adm.admit(i, peer)
        live.add(i)
        if evicted is not None:
            assert isinstance(evicted.conn, int)
            live.remove(evicted.conn)
        assert i in live
        if rng.random() < 0.1 and live:
            gone = rng.choice(sorted(live))
            adm.release(gone)
            live.remove(gone)
        clock.tick(0.001)
        assert adm.unauthenticated == len(live) <= 64
        assert all(adm.waiting(f"127.0.0.{p}") <= 16 for p in range(1, 10))


def test_authorized_connection_leaves_the_unauthenticated_budget(clock: FakeClock) -> None:
    adm = admission(clock)
    fill(adm, clock, ["a", "b", "c"], "p1")
    assert adm.authorize("a")
    assert adm.is_authorized("a")
    assert (adm.unauthenticated, adm.authorized, adm.waiting("p1")) == (2, 1, 2)
    # An authorized connection is never evicted, however many come after it.
    for n in range(100):
        evicted = adm.admit(n, "p1")
        assert evicted is None or evicted.conn != "a"
    assert adm.is_authorized("a")


def test_authorizing_twice_is_fine(clock: FakeClock) -> None:
    adm = admission(clock)
    fill(adm, clock, ["a"], "p1")
    assert adm.authorize("a")
    assert adm.authorize("a")
    assert adm.authorized == 1


def test_unauthenticated_connections_never_take_authorized_slots(clock: FakeClock) -> None:
    adm = admission(clock, authorized=4, unauthenticated=6)
    names = itertools.count()
    for _ in range(200):
        n = next(names)
        adm.admit(n, f"p{n % 50}")
    late = [f"client{i}" for i in range(4)]
    for name in late:
        adm.admit(name, "client")
        assert adm.authorize(name)
    assert adm.authorized == 4
    # The first client took the place of the oldest waiting connection.
    assert adm.unauthenticated == 5


def test_authorizing_past_max_authorized_fails_and_keeps_it_unauthenticated(
    clock: FakeClock,
) -> None:
    adm = admission(clock, authorized=2)
    fill(adm, clock, ["a", "b", "c"], "p")
    assert adm.authorize("a") and adm.authorize("b")
    assert not adm.authorize("c")
    assert not adm.is_authorized("c")
    assert adm.unauthenticated == 1
    adm.release("a")
    assert adm.authorize("c")


def test_an_evicted_connection_cannot_be_authorized(clock: FakeClock) -> None:
    adm = admission(clock, unauthenticated=1)
    adm.admit("a", "p")
    assert evicting(adm, "b", "p").conn == "a"
    assert not adm.authorize("a")
    assert adm.authorize("b")


def test_release_frees_either_kind_and_ignores_unknown_connections(clock: FakeClock) -> None:
    adm = admission(clock)
    fill(adm, clock, ["a", "b"], "p")
    adm.authorize("a")
    adm.release("a")
    adm.release("b")
    adm.release("never-admitted")
    assert (adm.authorized, adm.unauthenticated, adm.waiting("p")) == (0, 0, 0)


def test_trusted_connections_are_authorized_and_refused_when_full(clock: FakeClock) -> None:
    adm = admission(clock, authorized=2)
    assert adm.admit_trusted("a")
    assert adm.admit_trusted("b")
    assert not adm.admit_trusted("c")
    assert adm.authorized == 2 and adm.unauthenticated == 0


def test_admitting_a_connection_twice_is_a_bug(clock: FakeClock) -> None:
    adm = admission(clock)
    adm.admit("a", "p")
    with pytest.raises(ValueError):
        adm.admit("a", "p")


def test_limits_below_one_are_rejected(clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        admission(clock, per_peer=0)


def test_age_comes_from_the_clock(clock: FakeClock) -> None:
    adm = admission(clock, unauthenticated=1)
    adm.admit("a", "p")
    clock.tick(9.5)
    assert evicting(adm, "b", "p").age == 9.5


@pytest.mark.parametrize(
    "host,group",
    [
        ("127.0.0.2", "127.0.0.2"),
        ("::ffff:127.0.0.2", "127.0.0.2"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::1", "::/64"),
        ("unix uid=0", "unix uid=0"),
    ],
)
def test_peer_groups(host: str, group: str) -> None:
    assert peer_group(host) == group
