from __future__ import annotations

import json
from typing import Any

import pytest

from vdsm_imageio import ticketspec
from vdsm_imageio.errors import InvalidTicket

ENGINE_TICKET: dict[str, Any] = {
    "uuid": "6e7fb4a2-3d57-4b6b-9c1e-4e1a51c0f3a1",
    "timeout": 300,
    "inactivity_timeout": 60,
    "size": 1073741824,
    "url": "file:///tmp/image",
    "ops": ["write"],
    "sparse": True,
    "transfer_id": "b4b2e2a7-1f4f-4c5f-8f9a-0d1c2e3f4a5b",
    "dirty": False,
}


def parse(obj: object) -> ticketspec.TicketSpec:
    return ticketspec.parse(obj, default_inactivity_timeout=60)


def test_engine_ticket_is_accepted() -> None:
    spec = parse(ENGINE_TICKET)
    # As sent (ovirt-imageio reports them so); write still allows read.
    assert spec.ops == ("write",)
    assert spec.allows("read") and spec.allows("write")
    assert spec.sparse and not spec.dirty
    assert spec.inactivity_timeout == 60


def test_unknown_keys_are_ignored() -> None:
    assert parse({**ENGINE_TICKET, "engine_extra": {"a": 1}}) == parse(ENGINE_TICKET)


def test_missing_transfer_id_gets_a_name_that_hides_the_uuid() -> None:
    t = dict(ENGINE_TICKET)
    del t["transfer_id"]
    spec = parse(t)
    assert spec.transfer_id.startswith("anon-")
    assert t["uuid"] not in spec.transfer_id


def test_default_inactivity_timeout_from_config() -> None:
    t = dict(ENGINE_TICKET)
    del t["inactivity_timeout"]
    assert ticketspec.parse(t, default_inactivity_timeout=17).inactivity_timeout == 17


def test_volume_ticket_is_parsed() -> None:
    t = dict(ENGINE_TICKET)
    del t["url"]
    t["volume"] = {
        "domain": "block",
        "sd_id": "sd-1",
        "img_id": "img-1",
        "vol_id": "vol-1",
        "format": "cow",
        "lease": {"path": "/dev/sd-1/leases", "offset": 1048576},
    }
    spec = parse(t)
    assert spec.volume is not None and spec.volume.lease is not None
    assert spec.volume.lease.offset == 1048576
    assert spec.raw_volume == t["volume"]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"size": None}, "size"),
        ({"size": -1}, "size"),
        ({"size": "1024"}, "size"),
        ({"size": True}, "size"),
        ({"timeout": 1.5}, "timeout"),
        ({"timeout": None}, "timeout"),
        ({"uuid": ""}, "uuid"),
        ({"uuid": 7}, "uuid"),
        ({"ops": []}, "ops"),
        ({"ops": ["delete"]}, "ops"),
        ({"ops": "read"}, "ops"),
        ({"inactivity_timeout": -5}, "inactivity_timeout"),
        ({"sparse": "yes"}, "sparse"),
        ({"dirty": 1}, "dirty"),
        ({"url": "ftp://x/y"}, "url"),
        ({"url": "file:relative"}, "url"),
        ({"url": "nbd:tcp:host"}, "url"),
        ({"url": None}, "url"),
        ({"volume": {"domain": "file", "sd_id": "a", "img_id": "b", "vol_id": "c"}}, "url"),
        ({"filename": 3}, "filename"),
    ],
)
def test_invalid_field_is_named(change: dict[str, Any], field: str) -> None:
    t = {**ENGINE_TICKET, **change}
    t = {k: v for k, v in t.items() if v is not None}
    with pytest.raises(InvalidTicket) as e:
        parse(t)
    assert e.value.field == field


@pytest.mark.parametrize(
    "volume, field",
    [
        ({"domain": "nfs", "sd_id": "a", "img_id": "b", "vol_id": "c"}, "volume.domain"),
        ({"domain": "file", "img_id": "b", "vol_id": "c"}, "volume.sd_id"),
        ({"domain": "file", "sd_id": "../etc", "img_id": "b", "vol_id": "c"}, "volume.sd_id"),
        (
            {"domain": "file", "sd_id": "a", "img_id": "b", "vol_id": "c", "format": "vmdk"},
            "volume.format",
        ),
        (
            {"domain": "file", "sd_id": "a", "img_id": "b", "vol_id": "c", "lease": {"path": "/x"}},
            "volume.lease.offset",
        ),
        ("block", "volume"),
    ],
)
def test_invalid_volume_field_is_named(volume: object, field: str) -> None:
    t = {k: v for k, v in ENGINE_TICKET.items() if k != "url"}
    t["volume"] = volume
    with pytest.raises(InvalidTicket) as e:
        parse(t)
    assert e.value.field == field


def test_not_an_object() -> None:
    with pytest.raises(InvalidTicket) as e:
        parse(["uuid"])
    assert e.value.field == "ticket"


# Every field with every wrong type and value: each is refused naming the
# field, never with another exception.
NAN, INF = float("nan"), float("inf")
NOT_INTEGERS: list[object] = [True, False, 1.5, 1.0, "1", "", [], [1], {}, {"n": 1}, NAN, INF, -INF]
NOT_TEXT: list[object] = [True, 0, 7, 1.5, "", [], ["a"], {}, {"a": "b"}, NAN]
BAD_TEXT: list[object] = [
    "\udc80",
    "a\ud800",
    "a\x00b",
    "a\nb",
    "a\rb",
    "\x1b[31m",
    "a\x7fb",
    "a\x85b",
]
NOT_BOOLEANS: list[object] = [0, 1, "true", "", [], {}, 1.5, NAN]
VOLUME = {"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}

WRONG: list[tuple[str, object]] = [
    *[("size", v) for v in [*NOT_INTEGERS, -1, 2**63, 2**64, 10**4000, -(10**4000)]],
    *[("timeout", v) for v in [*NOT_INTEGERS, -1, 2**31, 2**64, 10**4000]],
    *[("inactivity_timeout", v) for v in [*NOT_INTEGERS, -1, 2**31, 10**4000]],
    *[(f, v) for f in ("uuid", "transfer_id", "filename", "url") for v in NOT_TEXT + BAD_TEXT],
    ("transfer_id", "two words"),
    ("transfer_id", "tab\there"),
    ("transfer_id", "nbsp\xa0here"),
    *[("ops", v) for v in [[], "read", ["read", 1], [None], [["read"]], [{}], {"read": 1}, 1]],
    *[(f, v) for f in ("sparse", "dirty") for v in NOT_BOOLEANS],
    *[("volume", v) for v in ["file", 1, [VOLUME], True]],
]

URLS = [
    "file:///a%00b",
    "file:///a%0ab",
    "file:///a%0D%0Ab",
    "file:///%ff%fe",
    "file://otherhost/etc/passwd",
    "file:relative/path",
    "http://[1.2.3.4:33",
    "https://[1.2.3.4:33/images/x",
    "https://[::1/images/x",
    "https://host:99999/images/x",
    "https://host:port/images/x",
    "https:///images/x",
    "nbd:tcp:host:10809",
    "nbd:unix:relative.sock",
    "ftp://host/x",
    "x" * 5000,
]

NOT_FORMATS: list[object] = [None, 1, "", "qcow2", "RAW", [], {}]
WRONG_VOLUME: list[tuple[str, object]] = [
    *[("domain", v) for v in [*NOT_TEXT, *BAD_TEXT, "nfs", "FILE"]],
    *[
        (f, v)
        for f in ("sd_id", "img_id", "vol_id")
        for v in [*NOT_TEXT, *BAD_TEXT, "../x", "a/b", "-a", "a b", "x" * 129]
    ],
    *[("format", v) for v in NOT_FORMATS],
    *[("nbd", v) for v in NOT_BOOLEANS],
    *[("bitmap", v) for v in NOT_TEXT + BAD_TEXT],
    *[("lease", v) for v in ["/dev/leases", 1, [], True]],
]

WRONG_LEASE: list[tuple[str, object]] = [
    *[("path", v) for v in [*NOT_TEXT, *BAD_TEXT]],
    *[("offset", v) for v in [*NOT_INTEGERS, -1, 2**63, 10**4000]],
]


def volume_ticket(**volume: Any) -> dict[str, Any]:
    t = {k: v for k, v in ENGINE_TICKET.items() if k != "url"}
    t["volume"] = {**VOLUME, **volume}
    return t


@pytest.mark.parametrize("field, value", WRONG)
def test_wrong_value_of_every_field_is_refused_naming_it(field: str, value: Any) -> None:
    with pytest.raises(InvalidTicket) as e:
        parse({**ENGINE_TICKET, field: value})
    assert e.value.field == field


@pytest.mark.parametrize("url", URLS)
def test_malformed_url_is_refused_naming_url(url: str) -> None:
    with pytest.raises(InvalidTicket) as e:
        parse({**ENGINE_TICKET, "url": url})
    assert e.value.field == "url"


@pytest.mark.parametrize("field, value", WRONG_VOLUME)
def test_wrong_value_of_every_volume_field_is_refused_naming_it(field: str, value: Any) -> None:
    with pytest.raises(InvalidTicket) as e:
        parse(volume_ticket(**{field: value}))
    assert e.value.field == f"volume.{field}"


@pytest.mark.parametrize("field, value", WRONG_LEASE)
def test_wrong_value_of_every_lease_field_is_refused_naming_it(field: str, value: Any) -> None:
    lease = {"path": "/dev/sd/leases", "offset": 0, field: value}
    with pytest.raises(InvalidTicket) as e:
        parse(volume_ticket(lease=lease))
    assert e.value.field == f"volume.lease.{field}"


@pytest.mark.parametrize(
    "change",
    [
        {"size": 0},
        {"size": 2**63 - 1},
        {"timeout": 0},
        {"timeout": 2**31 - 1},
        {"inactivity_timeout": 0},
        {"inactivity_timeout": 2**31 - 1},
        {"url": "file://localhost/var/tmp/disk%20one.raw"},
        {"url": "nbd:unix:/run/vdsm/nbd/x.sock:exportname=sda"},
        {"url": "https://[::1]:54322/images/x"},
        {"filename": "disk \u00e9t\u00e9 \U0001f4be.raw"},
        {"uuid": "\u00fcber uuid"},
    ],
)
def test_values_at_the_edges_are_accepted(change: dict[str, Any]) -> None:
    spec = parse({**ENGINE_TICKET, **change})
    key, value = next(iter(change.items()))
    assert getattr(spec, key) == value


def test_lease_offset_at_the_edge_is_accepted() -> None:
    spec = parse(volume_ticket(lease={"path": "/dev/sd/leases", "offset": 2**63 - 1}))
    assert spec.volume is not None and spec.volume.lease is not None
    assert spec.volume.lease.offset == 2**63 - 1


def test_huge_integer_is_refused_without_rendering_it() -> None:
    with pytest.raises(InvalidTicket) as e:
        parse({**ENGINE_TICKET, "size": 10**4000})
    assert e.value.fields["reason"] == "must be between 0 and 9223372036854775807"


def test_deeply_nested_value_is_shown_short() -> None:
    value: Any = []
    for _ in range(5000):
        value = [value]
    with pytest.raises(InvalidTicket) as e:
        parse({**ENGINE_TICKET, "size": value})
    assert len(e.value.message) < 200


def test_error_about_the_uuid_does_not_echo_it() -> None:
    secret = "6e7fb4a2-3d57-4b6b\n-9c1e"
    with pytest.raises(InvalidTicket) as e:
        parse({**ENGINE_TICKET, "uuid": secret})
    assert secret not in e.value.message
    assert "6e7fb4a2" not in e.value.message


def test_status_echoes_only_the_known_volume_keys() -> None:
    lease = {"path": "/dev/sd/leases", "offset": 0, "extra": [[[]]]}
    spec = parse(volume_ticket(engine_extra={"big": "x" * 1000}, lease=lease))
    assert spec.raw_volume == {**VOLUME, "lease": {"path": "/dev/sd/leases", "offset": 0}}


def test_json_form_parses_back_to_the_same_spec() -> None:
    for ticket in (ENGINE_TICKET, volume_ticket(lease={"path": "/l", "offset": 5}, bitmap="b")):
        spec = parse(ticket)
        assert parse(json.loads(json.dumps(spec.to_json()))) == spec
