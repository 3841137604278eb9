"""The one table from domain errors to HTTP statuses (vdsm_imageio.http.errors)."""

from __future__ import annotations

from vdsm_imageio.errors import BackendError, ImageEnded, PayloadTooLarge, StorageFull
from vdsm_imageio.http.errors import reply_for


def test_full_storage_is_507_that_closes_the_connection() -> None:
    reply = reply_for(StorageFull(reason="write failed: No space left on device"))
    assert reply is not None
    assert reply.status == 507
    assert reply.close
    assert reply.message == "Not enough space on the storage: write failed: No space left on device"


def test_other_storage_failures_stay_500() -> None:
    reply = reply_for(BackendError(reason="read failed: Input/output error"))
    assert reply is not None and reply.status == 500


def test_image_shorter_than_the_range_is_500_that_closes_the_connection() -> None:
    # The same status whichever data path found it (it was 400 on some).
    reply = reply_for(ImageEnded(offset=8 * 1024**2, end=48 * 1024**2))
    assert reply is not None
    assert (reply.status, reply.close) == (500, True)
    assert reply.message == "Image ended at offset 8388608, before the end of the range at 50331648"


def test_a_413_of_a_body_of_known_length_names_its_length() -> None:
    reply = reply_for(PayloadTooLarge(length=5000, limit=4096))
    assert reply is not None
    assert reply.status == 413
    assert reply.message == "Request body of 5000 bytes exceeds the limit of 4096 bytes"
