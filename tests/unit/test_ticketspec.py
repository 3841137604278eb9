import pytest

from vdsm_imageio import ticketspec
from vdsm_imageio.errors import InvalidTicket

ENGINE_TICKET = {
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


def parse(obj):
    return ticketspec.parse(obj, default_inactivity_timeout=60)


def test_engine_ticket_is_accepted():
    spec = parse(ENGINE_TICKET)
    assert spec.ops == ("read", "write")
    assert spec.sparse and not spec.dirty
    assert spec.inactivity_timeout == 60


def test_unknown_keys_are_ignored():
    assert parse({**ENGINE_TICKET, "engine_extra": {"a": 1}}) == parse(ENGINE_TICKET)


def test_missing_transfer_id_gets_a_name_that_hides_the_uuid():
    t = dict(ENGINE_TICKET)
    del t["transfer_id"]
    spec = parse(t)
    assert spec.transfer_id.startswith("anon-")
    assert t["uuid"] not in spec.transfer_id


def test_default_inactivity_timeout_from_config():
    t = dict(ENGINE_TICKET)
    del t["inactivity_timeout"]
    assert ticketspec.parse(t, default_inactivity_timeout=17).inactivity_timeout == 17


def test_volume_ticket_is_parsed():
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
def test_invalid_field_is_named(change, field):
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
def test_invalid_volume_field_is_named(volume, field):
    t = {k: v for k, v in ENGINE_TICKET.items() if k != "url"}
    t["volume"] = volume
    with pytest.raises(InvalidTicket) as e:
        parse(t)
    assert e.value.field == field


def test_not_an_object():
    with pytest.raises(InvalidTicket) as e:
        parse(["uuid"])
    assert e.value.field == "ticket"
