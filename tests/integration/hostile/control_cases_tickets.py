"""Control corpus cases about tickets: extending them and every field of a
ticket that Ticket.add is given.
"""

from __future__ import annotations

import json
from typing import Any

from tests.integration.hostile.control_requests import (
    CONFLICT,
    IMAGE_DAEMON_ERROR,
    INVALID_PARAMS,
    MAX_DEPTH,
    NOT_FOUND,
    PARSE,
    Case,
    add,
    add_raw,
    add_volume,
    line,
    nested,
    req,
)
from tests.integration.hostile.control_support import (
    BAD_TIMEOUTS,
)


def extend(method: str, timeout: Any) -> Any:
    return lambda w: line(req(method, {"uuid": w.writable, "timeout": timeout}))


EXTEND = [
    *[
        Case(
            f"{method}-timeout-{name}",
            extend(method, value),
            *(
                (INVALID_PARAMS, "timeout")
                if method == "Ticket.extend"
                else (IMAGE_DAEMON_ERROR, None, "status=400, reason=Bad Request")
            ),
        )
        for method in ("Ticket.extend", "Host.extend_image_ticket")
        for name, value in BAD_TIMEOUTS
    ],
    Case(
        "extend-unknown", line(req("Ticket.extend", {"uuid": "no-such", "timeout": 1})), NOT_FOUND
    ),
    Case(
        "extend-timeout-nan",
        lambda w: (
            b'{"jsonrpc": "2.0", "method": "Ticket.extend", "id": 1, "params": {"uuid": "'
            + w.writable.encode()
            + b'", "timeout": NaN}}'
        ),
        PARSE,
    ),
]

TICKET_FIELDS = [
    # Defect 4 of the issue, one by one.
    Case("url-percent-nul", add(url="file:///a%00b"), INVALID_PARAMS, "url"),
    Case("url-nul", add(url="file:///a\x00b"), INVALID_PARAMS, "url"),
    Case("url-unclosed-ipv6", add(url="http://[1.2.3.4:33"), INVALID_PARAMS, "url"),
    Case("url-https-unclosed-ipv6", add(url="https://[::1/images/x"), INVALID_PARAMS, "url"),
    Case("url-bad-port", add(url="https://host:99999/images/x"), INVALID_PARAMS, "url"),
    Case("url-newline", add(url="file:///var/tmp/a\nb"), INVALID_PARAMS, "url"),
    Case("url-percent-newline", add(url="file:///var/tmp/a%0Ab"), INVALID_PARAMS, "url"),
    Case("url-not-utf8", add(url="file:///var/tmp/%ff"), INVALID_PARAMS, "url"),
    Case("url-other-host", add(url="file://elsewhere/etc/hosts"), INVALID_PARAMS, "url"),
    Case("url-relative", add(url="file:var/tmp/x"), INVALID_PARAMS, "url"),
    Case("url-scheme", add(url="ftp://host/x"), INVALID_PARAMS, "url"),
    Case("url-nbd-tcp", add(url="nbd:tcp:localhost:10809"), INVALID_PARAMS, "url"),
    Case("url-number", add(url=7), INVALID_PARAMS, "url"),
    Case(
        "url-and-volume",
        add(volume={"domain": "file", "sd_id": "sd", "img_id": "img", "vol_id": "vol"}),
        INVALID_PARAMS,
        "url",
    ),
    Case("size-2**63", add(size=2**63), INVALID_PARAMS, "size"),
    Case("size-2**64", add(size=2**64), INVALID_PARAMS, "size"),
    Case("size-10**4000", add(size=10**4000), INVALID_PARAMS, "size"),
    Case("size-negative-huge", add(size=-(10**4000)), INVALID_PARAMS, "size"),
    Case("size-5000-digits", add_raw("size", "1" + "0" * 5000), PARSE),
    Case("size-1e400", add_raw("size", "1e400"), PARSE),
    Case("size-nan", add_raw("size", "NaN"), PARSE),
    Case("size-negative", add(size=-1), INVALID_PARAMS, "size"),
    Case("size-true", add(size=True), INVALID_PARAMS, "size"),
    Case("size-float", add(size=4096.0), INVALID_PARAMS, "size"),
    Case("size-string", add(size="4096"), INVALID_PARAMS, "size"),
    Case("size-null", add(size=None), INVALID_PARAMS, "size"),
    Case("size-list", add(size=[4096]), INVALID_PARAMS, "size"),
    Case("size-object", add(size={"bytes": 4096}), INVALID_PARAMS, "size"),
    Case("size-deep", add(size=json.loads(nested(MAX_DEPTH - 4))), INVALID_PARAMS, "size"),
    Case("timeout-2**31", add(timeout=2**31), INVALID_PARAMS, "timeout"),
    Case("timeout-float", add(timeout=1.5), INVALID_PARAMS, "timeout"),
    Case("timeout-false", add(timeout=False), INVALID_PARAMS, "timeout"),
    Case("inactivity-negative", add(inactivity_timeout=-1), INVALID_PARAMS, "inactivity_timeout"),
    Case("inactivity-2**64", add(inactivity_timeout=2**64), INVALID_PARAMS, "inactivity_timeout"),
    Case("inactivity-string", add(inactivity_timeout="60"), INVALID_PARAMS, "inactivity_timeout"),
    Case("uuid-surrogate", add(uuid="\udc80"), INVALID_PARAMS, "uuid"),
    Case("uuid-nul", add(uuid="a\x00b"), INVALID_PARAMS, "uuid"),
    Case("uuid-newline", add(uuid="a\nb"), INVALID_PARAMS, "uuid"),
    Case("uuid-empty", add(uuid=""), INVALID_PARAMS, "uuid"),
    Case("uuid-number", add(uuid=12345), INVALID_PARAMS, "uuid"),
    Case("transfer-id-space", add(transfer_id="t 1 size=0"), INVALID_PARAMS, "transfer_id"),
    Case("transfer-id-newline", add(transfer_id="t\nFORGED line"), INVALID_PARAMS, "transfer_id"),
    Case("transfer-id-escape", add(transfer_id="\x1b[2J"), INVALID_PARAMS, "transfer_id"),
    Case("transfer-id-list", add(transfer_id=["t"]), INVALID_PARAMS, "transfer_id"),
    Case("filename-nul", add(filename="disk\x00.raw"), INVALID_PARAMS, "filename"),
    Case("filename-number", add(filename=1), INVALID_PARAMS, "filename"),
    Case("ops-empty", add(ops=[]), INVALID_PARAMS, "ops"),
    Case("ops-string", add(ops="write"), INVALID_PARAMS, "ops"),
    Case("ops-unknown", add(ops=["delete"]), INVALID_PARAMS, "ops"),
    Case("ops-nested", add(ops=[["read"]]), INVALID_PARAMS, "ops"),
    Case("ops-object", add(ops={"read": True}), INVALID_PARAMS, "ops"),
    Case("sparse-string", add(sparse="yes"), INVALID_PARAMS, "sparse"),
    Case("dirty-number", add(dirty=1), INVALID_PARAMS, "dirty"),
    Case("volume-string", add(url=None, volume="file"), INVALID_PARAMS, "volume"),
    Case("volume-empty", add_volume(domain=None), INVALID_PARAMS, "volume.domain"),
    Case("volume-domain", add_volume(domain="nfs"), INVALID_PARAMS, "volume.domain"),
    Case("volume-sd-id-path", add_volume(sd_id="../../etc"), INVALID_PARAMS, "volume.sd_id"),
    Case("volume-img-id-nul", add_volume(img_id="a\x00"), INVALID_PARAMS, "volume.img_id"),
    Case("volume-vol-id-number", add_volume(vol_id=5), INVALID_PARAMS, "volume.vol_id"),
    Case("volume-format", add_volume(format="qcow2"), INVALID_PARAMS, "volume.format"),
    Case("volume-format-list", add_volume(format=["raw"]), INVALID_PARAMS, "volume.format"),
    Case("volume-nbd-string", add_volume(nbd="true"), INVALID_PARAMS, "volume.nbd"),
    Case("volume-bitmap-empty", add_volume(bitmap=""), INVALID_PARAMS, "volume.bitmap"),
    Case("volume-lease-string", add_volume(lease="/dev/leases"), INVALID_PARAMS, "volume.lease"),
    Case(
        "volume-lease-no-offset",
        add_volume(lease={"path": "/l"}),
        INVALID_PARAMS,
        "volume.lease.offset",
    ),
    Case(
        "volume-lease-offset-2**63",
        add_volume(lease={"path": "/l", "offset": 2**63}),
        INVALID_PARAMS,
        "volume.lease.offset",
    ),
    Case(
        "volume-lease-path-nul",
        add_volume(lease={"path": "/l\x00", "offset": 0}),
        INVALID_PARAMS,
        "volume.lease.path",
    ),
    Case(
        "host-add-size-2**64",
        lambda w: line(req("Host.add_image_ticket", {"ticket": w.new_ticket(size=2**64)})),
        IMAGE_DAEMON_ERROR,
        mentions="status=400, reason=Bad Request, error=Invalid ticket field 'size'",
    ),
    Case(
        "host-add-url-nul",
        lambda w: line(req("Host.add_image_ticket", {"ticket": w.new_ticket(url="file:///a%00b")})),
        IMAGE_DAEMON_ERROR,
        mentions="status=400, reason=Bad Request, error=Invalid ticket field 'url'",
    ),
    Case(
        "host-add-existing-outside-roots",
        lambda w: line(
            req(
                "Host.add_image_ticket",
                {"ticket": w.new_ticket(uuid=w.writable, url="file:///etc/passwd")},
            )
        ),
        IMAGE_DAEMON_ERROR,
        mentions="status=400, reason=Bad Request, error=Invalid ticket field 'url'",
    ),
    Case(
        "host-add-not-an-object",
        line(req("Host.add_image_ticket", {"ticket": [1]})),
        IMAGE_DAEMON_ERROR,
        mentions="error=Invalid ticket field 'ticket'",
    ),
    Case(
        "host-get-unknown",
        line(req("Host.get_image_ticket", {"uuid": "no-such"})),
        IMAGE_DAEMON_ERROR,
        mentions="'status=404, reason=Not Found, error=No such ticket: no-such\\n'",
    ),
    Case(
        "host-get-uuid-number",
        line(req("Host.get_image_ticket", {"uuid": 7})),
        IMAGE_DAEMON_ERROR,
        mentions="status=400",
    ),
    Case("host-get-no-uuid", line(req("Host.get_image_ticket", {})), INVALID_PARAMS, "uuid"),
    Case(
        "host-remove-extra-param",
        lambda w: line(req("Host.remove_image_ticket", {"uuid": w.writable, "force": True})),
        INVALID_PARAMS,
        "force",
    ),
    Case(
        "add-existing-with-other-size",
        lambda w: line(
            req("Ticket.add", {"ticket": {**w.new_ticket(uuid=w.writable), "size": 4096}})
        ),
        CONFLICT,
    ),
    Case(
        "add-existing-read-only-as-writer",
        lambda w: line(
            req(
                "Ticket.add",
                {"ticket": {**w.new_ticket(uuid=w.readonly), "url": w.readonly_image.as_uri()}},
            )
        ),
        CONFLICT,
    ),
]
