"""Computes checksums with ovirt-imageio's client library; run by the python
of the ovirt-imageio virtual environment, never by the project's.

    checksum_driver.py FILE ALGORITHM:BLOCK_SIZE ...

Prints one JSON object on stdout mapping each ALGORITHM:BLOCK_SIZE to the
result of ``ovirt_imageio.client.checksum()`` (the image's guest data, read
through the client's own qemu-nbd, so a qcow2 file gives the checksum of
what the guest sees), or to {"error": ...} when the client cannot compute
it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ovirt_imageio import client


def main() -> int:
    path, pairs = sys.argv[1], sys.argv[2:]
    out: dict[str, Any] = {}
    for pair in pairs:
        algorithm, block_size = pair.split(":")
        try:
            out[pair] = client.checksum(path, block_size=int(block_size), algorithm=algorithm)
        except Exception as e:
            out[pair] = {"error": f"{type(e).__name__}: {e}"}
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
