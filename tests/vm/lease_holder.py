"""Hold a sanlock lease in a process of its own until stdin closes.

    python lease_holder.py LOCKSPACE RESOURCE PATH OFFSET

Prints "acquired" once it holds the lease, or "error ERRNO" and exits 1.
"""

from __future__ import annotations

import sys

import sanlock


def main() -> int:
    lockspace, resource, path, offset = sys.argv[1:5]
    fd = sanlock.register()
    try:
        sanlock.acquire(lockspace.encode(), resource.encode(), [(path, int(offset))], slkfd=fd)
    except sanlock.SanlockException as e:
        print(f"error {e.errno}", flush=True)
        return 1
    print("acquired", flush=True)
    sys.stdin.read()
    # Exiting closes the registration: sanlock releases the lease.
    return 0


if __name__ == "__main__":
    sys.exit(main())
