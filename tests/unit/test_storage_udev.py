"""storage.udev's event matching (the monitor itself runs in the VM lane)."""

from __future__ import annotations

from storage.udev import Event

EVENT = Event(
    action="change",
    node="/dev/dm-0",
    number=(254 << 8),
    links=frozenset({"/dev/vg/lv", "/dev/mapper/vg-lv"}),
)


def test_event_names_device_by_node_or_link() -> None:
    assert EVENT.names("/dev/dm-0")
    assert EVENT.names("/dev/vg/lv")
    assert EVENT.names("/dev/mapper/vg-lv")
    assert not EVENT.names("/dev/vg/other")
    assert not EVENT.names("/dev/dm-1")
