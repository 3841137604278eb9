"""The block checksum of a local image, equal to the server's ``/checksum``.

The rule and the threads are the service's own (``vdsm_imageio.checksum``,
``vdsm_imageio.checksum_io``): the client only supplies the local image's
guest data, one handle per thread, so both sides compute the checksum with
the same code. The image is the local file zero-extended to ``size`` (a
disk larger than the uploaded image reads as zeros past its end), and, as
qemu shows it, padded with zeros to whole sectors.
"""

from __future__ import annotations

from .. import checksum as core
from .. import checksum_io
from ..backends import ZeroExtent
from ..pipeline import BufferPool
from .errors import UsageError
from .local import Handle, LocalImage

DEFAULT_ALGORITHM = core.DEFAULT_ALGORITHM
DEFAULT_BLOCK_SIZE = core.DEFAULT_BLOCK_SIZE


def check_algorithm(algorithm: str) -> None:
    if algorithm not in core.algorithms():
        raise UsageError(
            reason=f"unknown algorithm {algorithm!r}; one of {', '.join(core.algorithms())}"
        )


def compute(
    image: LocalImage,
    *,
    size: int | None = None,
    algorithm: str = DEFAULT_ALGORITHM,
    block_size: int = DEFAULT_BLOCK_SIZE,
    workers: int = 4,
) -> str:
    """The hex checksum of the image's guest data, zero-extended to size."""
    check_algorithm(algorithm)
    size = image.size if size is None else size
    lanes = max(1, workers)
    handles: list[Handle] = []
    try:
        for _ in range(lanes):
            handles.append(image.open())
        extents: list[ZeroExtent] = handles[0].zero_extents()
        if size > image.size:
            extents.append(ZeroExtent(image.size, size - image.size, zero=True, hole=True))
        zeros = core.ZeroDigests()
        return checksum_io.compute(
            core.plan(extents, size, block_size, core.BLOCK_ALIGNMENT),
            new=core.hash_factory(algorithm),
            zero_digest=lambda n: zeros.get(algorithm, n),
            readers=[_reader(h, image.size) for h in handles],
            pool=BufferPool(block_size, checksum_io.WORKERS_PER_LANE * lanes),
            lanes=lanes,
            progress=lambda n: None,
        )
    finally:
        for h in handles:
            h.close()


def _reader(h: Handle, image_size: int) -> checksum_io.ReadAt:
    def read(offset: int, buf: memoryview) -> None:
        """Fill buf; zeros past the image's end."""
        pos = 0
        while pos < len(buf):
            if offset + pos >= image_size:
                buf[pos:] = bytes(len(buf) - pos)
                return
            n = h.readinto(
                offset + pos, buf[pos : pos + min(len(buf) - pos, image_size - offset - pos)]
            )
            if n == 0:
                buf[pos:] = bytes(len(buf) - pos)
                return
            pos += n

    return read
