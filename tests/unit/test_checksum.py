"""The checksum's pure core: validation, the block plan, zero digests.

Digests of whole images are tested in test_checksum_io.py (against the
rule written plainly) and tests/compat/test_checksum_compat.py (against
ovirt-imageio 2.5.1).
"""

from __future__ import annotations

import hashlib

import pytest

from vdsm_imageio import checksum
from vdsm_imageio.backends import ZeroExtent
from vdsm_imageio.checksum import Block, BlockHash, Job, ZeroDigests
from vdsm_imageio.errors import BadRequest

KiB = 1024
MiB = 1024**2


def zero(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=True, hole=True)


def data(start: int, length: int) -> ZeroExtent:
    return ZeroExtent(start, length, zero=False, hole=False)


# Algorithms.


def test_algorithms_are_sorted_and_exclude_shake() -> None:
    names = checksum.algorithms()
    assert names == sorted(names)
    assert {"blake2b", "blake2s", "md5", "sha1", "sha256", "sha512"} <= set(names)
    assert not [n for n in names if n.startswith("shake_")]
    assert set(names) <= hashlib.algorithms_available


def test_blake2_digests_are_32_bytes_others_natural() -> None:
    assert len(checksum.hash_factory("blake2b")().digest()) == 32
    assert len(checksum.hash_factory("blake2s")().digest()) == 32
    assert len(checksum.hash_factory("sha512")().digest()) == 64
    assert len(checksum.hash_factory("md5")().digest()) == 16


def test_blake2b_matches_hashlib_with_digest_size_32() -> None:
    h = checksum.hash_factory("blake2b")()
    h.update(b"abc")
    assert h.digest() == hashlib.blake2b(b"abc", digest_size=32).digest()


def test_defaults_are_blake2b_and_4_mib() -> None:
    assert checksum.parse_algorithm(None, ["blake2b"]) == "blake2b"
    assert checksum.parse_block_size(None) == 4 * MiB


@pytest.mark.parametrize("name", ["sha3", "SHA256", "shake_128", "", "blake2b "])
def test_unknown_algorithm_is_bad_request_naming_algorithm(name: str) -> None:
    with pytest.raises(BadRequest) as e:
        checksum.parse_algorithm(name, checksum.algorithms())
    assert "algorithm" in str(e.value)


@pytest.mark.parametrize("size", [MiB, 4 * MiB, 16 * MiB, MiB + 4096, 16 * MiB - 4096])
def test_block_size_in_range_and_aligned_is_accepted(size: int) -> None:
    assert checksum.parse_block_size(str(size)) == size


@pytest.mark.parametrize(
    "text",
    [
        "0",
        str(MiB - 4096),
        str(16 * MiB + 4096),
        str(32 * MiB),
        str(MiB + 512),
        "+1048576",
        " 1048576",
        "1_048_576",
        "1048576.0",
        "-1048576",
        "0x100000",
        "",
        "\u0661\u0660\u0664\u0668\u0665\u0667\u0666",  # Arabic-Indic digits
    ],
)
def test_bad_block_size_is_bad_request_naming_block_size(text: str) -> None:
    with pytest.raises(BadRequest) as e:
        checksum.parse_block_size(text)
    assert "block_size" in str(e.value)


# The plan.


def test_plan_of_holes_and_data_reads_only_data() -> None:
    extents = [
        data(0, 4 * KiB),
        zero(4 * KiB, 2 * MiB - 4 * KiB),
        data(2 * MiB, MiB),
        zero(3 * MiB, MiB),
    ]
    blocks = list(checksum.plan(extents, 4 * MiB, MiB, 4096))
    assert blocks == [
        Block(0, MiB, ((0, 4 * KiB),)),
        Block(MiB, MiB),
        Block(2 * MiB, MiB, ((2 * MiB, MiB),)),
        Block(3 * MiB, MiB),
    ]
    assert [b.zero for b in blocks] == [False, True, False, True]


def test_plan_cuts_a_long_data_run_at_block_boundaries() -> None:
    extents = [zero(0, MiB - 4096), data(MiB - 4096, 2 * MiB + 8192), zero(3 * MiB + 4096, MiB)]
    blocks = list(checksum.plan(extents, 4 * MiB, MiB, 4096))
    assert [b.data for b in blocks] == [
        ((MiB - 4096, 4096),),
        ((MiB, MiB),),
        ((2 * MiB, MiB),),
        ((3 * MiB, 4096),),
    ]


def test_plan_last_block_is_shorter_when_size_is_unaligned() -> None:
    size = 2 * MiB + 4096
    blocks = list(checksum.plan([data(0, size)], size, MiB, 4096))
    assert [(b.start, b.length) for b in blocks] == [(0, MiB), (MiB, MiB), (2 * MiB, 4096)]
    assert blocks[-1].data == ((2 * MiB, 4096),)


def test_plan_pads_a_partial_sector_with_zeros_it_never_reads() -> None:
    # qemu (and so ovirt-imageio's client) sees whole sectors.
    size = 2 * MiB + 100
    blocks = list(checksum.plan([data(0, size)], size, MiB, 4096))
    assert [(b.start, b.length) for b in blocks] == [(0, MiB), (MiB, MiB), (2 * MiB, 512)]
    assert blocks[-1].data == ((2 * MiB, 100),)
    assert checksum.checksum_size(size) == 2 * MiB + 512
    assert checksum.checksum_size(2 * MiB) == 2 * MiB


def test_plan_rounds_data_out_to_alignment_and_merges() -> None:
    # [5000, 5100) and [8200, 8210) lie in adjacent pages: one read.
    extents = [zero(0, 5000), data(5000, 100), zero(5100, 3100), data(8200, 10), zero(8210, MiB)]
    blocks = list(checksum.plan(extents, MiB, MiB, 4096))
    assert blocks == [Block(0, MiB, ((4096, 8192),))]


def test_plan_reads_what_no_extent_covers() -> None:
    # A gap in the extents and extents that end early are read, not assumed zero.
    extents = [zero(0, MiB), zero(2 * MiB, MiB)]
    blocks = list(checksum.plan(extents, 4 * MiB, MiB, 4096))
    assert [b.data for b in blocks] == [(), ((MiB, MiB),), (), ((3 * MiB, MiB),)]


def test_plan_ignores_extents_past_the_size() -> None:
    blocks = list(checksum.plan([zero(0, MiB), data(MiB, 10 * MiB)], MiB, MiB, 4096))
    assert blocks == [Block(0, MiB)]


def test_plan_of_an_empty_image_is_empty() -> None:
    assert list(checksum.plan([], 0, MiB, 4096)) == []


def test_schedule_groups_consecutive_data_blocks_up_to_the_window() -> None:
    b = [Block(i * MiB, MiB, ((i * MiB, MiB),)) for i in range(5)]
    z = Block(5 * MiB, MiB)
    items = list(checksum.schedule([b[0], b[1], b[2], z, b[3], b[4]], 2 * MiB))
    assert items == [Job((b[0], b[1])), Job((b[2],)), z, Job((b[3], b[4]))]


def test_schedule_gives_a_block_longer_than_the_window_a_job_of_its_own() -> None:
    b = [Block(i * 4 * MiB, 4 * MiB, ((i * 4 * MiB, 4096),)) for i in range(2)]
    job = Job((b[0],))
    assert list(checksum.schedule(b, MiB)) == [job, Job((b[1],))]
    assert list(checksum.windows(job, MiB)) == [(i * MiB, MiB) for i in range(4)]


def test_pieces_in_clips_to_the_window() -> None:
    job = Job((Block(0, 4 * MiB, ((4096, 3 * MiB),)),))
    assert list(checksum.pieces_in(job, MiB, 2 * MiB)) == [(MiB, MiB)]
    assert list(checksum.pieces_in(job, 0, MiB)) == [(4096, MiB - 4096)]
    assert list(checksum.pieces_in(job, 3 * MiB + 4096, 4 * MiB)) == []


# Digests.


@pytest.mark.parametrize("length", [0, 1, 4096, 64 * KiB + 1, MiB])
def test_is_zero(length: int) -> None:
    buf = bytearray(length)
    assert checksum.is_zero(memoryview(buf))
    if length:
        buf[-1] = 1
        assert not checksum.is_zero(memoryview(buf))


@pytest.mark.parametrize("algorithm", ["blake2b", "sha256", "md5"])
@pytest.mark.parametrize("length", [4096, MiB + 100])
def test_zero_digest_is_the_digest_of_zeros(algorithm: str, length: int) -> None:
    h = checksum.hash_factory(algorithm)()
    h.update(bytes(length))
    assert ZeroDigests().get(algorithm, length) == h.digest()


def test_zero_digests_are_bounded() -> None:
    digests = ZeroDigests(capacity=2)
    for n in (1, 2, 3):
        digests.get("sha1", n)
    assert len(digests._digests) == 2
    assert list(digests._digests) == [("sha1", 2), ("sha1", 3)]


def test_block_hash_of_zeros_uses_the_zero_digest_without_hashing() -> None:
    asked: list[int] = []

    def new() -> checksum.HashObject:
        raise AssertionError("a zero block was hashed")

    def zero_digest(n: int) -> bytes:
        asked.append(n)
        return b"Z"

    h = BlockHash(new, zero_digest)
    h.update(memoryview(bytes(MiB)))
    h.update(memoryview(bytes(100)))
    assert h.digest() == b"Z"
    assert asked == [MiB + 100]


def test_block_hash_feeds_leading_zeros_before_the_first_data() -> None:
    new = checksum.hash_factory("sha256")
    piece = b"\0" * 3000 + b"x" * 5000
    h = BlockHash(new, lambda n: b"unused")
    h.update(memoryview(bytes(200 * KiB)))
    h.update(memoryview(piece))
    h.update(memoryview(bytes(10)))
    expected = new()
    expected.update(bytes(200 * KiB) + piece + bytes(10))
    assert h.digest() == expected.digest()
