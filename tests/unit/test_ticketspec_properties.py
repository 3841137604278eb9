"""Property-based lane over the ticket spec parser.

Whatever JSON a caller sends as a ticket, ``ticketspec.parse`` either
returns a spec whose JSON form parses back to the same spec, or raises
InvalidTicket naming one of the ticket's fields. Any other exception is a
500 / -32603 waiting to happen.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vdsm_imageio import ticketspec
from vdsm_imageio.errors import InvalidTicket

FIELDS = {
    "ticket",
    "uuid",
    "size",
    "ops",
    "timeout",
    "inactivity_timeout",
    "transfer_id",
    "url",
    "filename",
    "sparse",
    "dirty",
    "volume",
    *(f"volume.{key}" for key in ticketspec.VOLUME_KEYS),
    "volume.lease.path",
    "volume.lease.offset",
}

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Lone surrogates, C0/C1 controls, line and paragraph separators (joined
# by hand: st.text() never yields a surrogate).
nasty_text = st.lists(
    st.one_of(st.characters(), st.characters(categories=["Cs", "Cc", "Zl", "Zp"])),
    min_size=1,
    max_size=8,
).map("".join)
# What JSON text decodes to, including what a hostile sender can reach:
# lone surrogates ("\udc80"), NaN and Infinity from a lenient encoder,
# integers far past 64 bits.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63), 10**4000]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    nasty_text,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)

# Printable text, so that a good share of the tickets is valid.
words = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=24
)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}", fullmatch=True)
urls = st.one_of(
    st.builds(lambda p: "file:///" + p, st.from_regex(r"[a-z0-9/%._-]{0,30}", fullmatch=True)),
    st.builds(lambda p: "nbd:unix:/" + p, st.from_regex(r"[a-z0-9/:=._-]{0,30}", fullmatch=True)),
    st.sampled_from(
        [
            "https://host:54322/images/x",
            "https://[::1]:54322/images/x",
            "http://[1.2.3.4:33",
            "file:///a%00b",
            "file:///%ff",
            "https://host:99999/images/x",
        ]
    ),
    words,
)
leases = st.fixed_dictionaries(
    {},
    optional={
        "path": st.one_of(words, json_values),
        "offset": st.one_of(st.integers(0, 2**63 - 1), json_values),
    },
)
volumes = st.fixed_dictionaries(
    {},
    optional={
        "domain": st.one_of(st.sampled_from(ticketspec.VOLUME_DOMAINS), json_values),
        "sd_id": st.one_of(ids, json_values),
        "img_id": st.one_of(ids, json_values),
        "vol_id": st.one_of(ids, json_values),
        "format": st.one_of(st.sampled_from(ticketspec.VOLUME_FORMATS), json_values),
        "lease": st.one_of(leases, json_values),
        "nbd": st.one_of(st.booleans(), json_values),
        "bitmap": st.one_of(ids, json_values),
        "engine_extra": json_values,
    },
)
tickets = st.fixed_dictionaries(
    {},
    optional={
        "uuid": st.one_of(words, json_values),
        "size": st.one_of(st.integers(0, 2**63 - 1), json_values),
        "ops": st.one_of(st.lists(st.sampled_from(ticketspec.OPS), min_size=1), json_values),
        "timeout": st.one_of(st.integers(0, 2**31 - 1), json_values),
        "inactivity_timeout": st.one_of(st.integers(0, 2**31 - 1), json_values),
        "transfer_id": st.one_of(ids, words, json_values),
        "url": st.one_of(urls, json_values),
        "volume": st.one_of(volumes, json_values),
        "filename": st.one_of(words, json_values),
        "sparse": st.one_of(st.booleans(), json_values),
        "dirty": st.one_of(st.booleans(), json_values),
        "engine_extra": json_values,
    },
)


valid_tickets = st.fixed_dictionaries(
    {
        "uuid": words,
        "size": st.integers(0, 2**63 - 1),
        "ops": st.lists(st.sampled_from(ticketspec.OPS), min_size=1),
        "timeout": st.integers(0, 2**31 - 1),
        "url": st.sampled_from(["file:///var/tmp/disk.raw", "nbd:unix:/run/x.sock"]),
    },
    optional={
        "inactivity_timeout": st.integers(0, 2**31 - 1),
        "transfer_id": ids,
        "filename": words,
        "sparse": st.booleans(),
        "dirty": st.booleans(),
    },
)
edge_integers = st.one_of(
    st.integers(-(2**64), 2**64),
    st.sampled_from([-1, 0, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, 10**4000]),
)
TOP_FIELDS = sorted(f for f in FIELDS if "." not in f and f != "ticket")


def parse(obj: Any) -> ticketspec.TicketSpec:
    return ticketspec.parse(obj, default_inactivity_timeout=60)


def check(obj: Any) -> ticketspec.TicketSpec | InvalidTicket:
    """The property: a spec that round-trips, or InvalidTicket naming a field."""
    try:
        spec = parse(obj)
    except InvalidTicket as e:
        event(f"refused: {e.field}")
        assert e.field in FIELDS, e
        # The message is short whatever the value was.
        assert len(e.message) < 400, e.message
        return e
    event("parsed")
    # The control channel speaks UTF-8: the spec's text must be UTF-8 too.
    text = json.dumps(spec.to_json(), allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")
    assert parse(json.loads(text)) == spec
    assert_contract(spec)
    # Status echoes the volume as sent: it must be JSON too.
    json.dumps(spec.raw_volume, allow_nan=False)
    return spec


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def assert_contract(spec: ticketspec.TicketSpec) -> None:
    """What the rest of the service relies on in an accepted spec."""
    assert 0 <= spec.size <= 2**63 - 1  # off_t
    assert 0 <= spec.timeout <= 2**31 - 1  # the engine's Java int
    assert 0 <= spec.inactivity_timeout <= 2**31 - 1
    texts = [spec.uuid, spec.transfer_id, spec.url, spec.filename]
    if spec.volume is not None:
        v = spec.volume
        texts += [v.domain, v.sd_id, v.img_id, v.vol_id, v.format, v.bitmap]
        if v.lease is not None:
            assert 0 <= v.lease.offset <= 2**63 - 1
            texts.append(v.lease.path)
    if spec.url is not None:
        parts = urlsplit(spec.url)
        assert parts.port is None or 0 <= parts.port <= 65535  # raises if not a port
        if parts.scheme == "file":
            texts.append(unquote(parts.path, errors="strict"))
    for text in texts:
        assert text is None or not CONTROL.search(text), text
    assert not any(c.isspace() for c in spec.transfer_id)


@SETTINGS
@given(tickets)
def test_any_ticket_parses_and_round_trips_or_names_a_field(ticket: dict[str, Any]) -> None:
    check(ticket)


@SETTINGS
@given(json_values)
def test_any_json_value_as_a_ticket_names_a_field(value: Any) -> None:
    check(value)


@SETTINGS
@given(
    url=urls,
    volume=volumes,
    size=st.integers(0, 2**63 - 1),
    ops=st.lists(st.sampled_from(ticketspec.OPS), min_size=1),
)
def test_well_typed_tickets_round_trip(
    url: str, volume: dict[str, Any], size: int, ops: list[str]
) -> None:
    # Mostly valid tickets, so the round trip is exercised as well.
    base = {"uuid": "u-1", "size": size, "ops": ops, "timeout": 30}
    check({**base, "url": url})
    check({**base, "volume": volume})


def spoiled(text: str, char: str, at: int) -> str:
    at %= len(text) + 1
    return text[:at] + char + text[at:]


# One character that has no place in a ticket's text, put anywhere in a
# valid value: the near misses a careless or hostile sender makes.
stray = st.one_of(
    *(st.characters(categories=[c]) for c in ("Cs", "Cc", "Zs", "Zl", "Zp")),
    st.sampled_from(["\x00", "\n", "\x85", " ", "%00", "%0a", "%ff", "[", ":99999"]),
)
near_misses = {
    "text": st.builds(spoiled, ids, stray, st.integers(0, 30)),
    "url": st.builds(spoiled, urls, stray, st.integers(0, 40)),
    "integer": edge_integers,
}
KIND = {
    "uuid": "text",
    "transfer_id": "text",
    "filename": "text",
    "url": "url",
    "size": "integer",
    "timeout": "integer",
    "inactivity_timeout": "integer",
}


@SETTINGS
@given(ticket=valid_tickets, field=st.sampled_from(TOP_FIELDS), data=st.data())
def test_one_wrong_field_is_the_field_named(
    ticket: dict[str, Any], field: str, data: st.DataObject
) -> None:
    wrong = st.one_of(json_values, nasty_text)
    if field in KIND:
        wrong = st.one_of(near_misses[KIND[field]], wrong)
    outcome = check({**ticket, field: data.draw(wrong, label=field)})
    if isinstance(outcome, InvalidTicket):
        named = outcome.field
        # A volume next to the url is refused as "exactly one of url and volume".
        assert named.split(".")[0] == field or (field == "volume" and named == "url")
