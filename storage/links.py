"""The run-directory links through which the service reaches volumes.

A prepared volume is served through ``<run_dir>/storage/<sd_id>/<img_id>/
<vol_id>``, a symbolic link to the file or to the LV's device: the ticket's
URL names a path the service owns, whatever the domain type, and a look at
the run directory shows what is prepared. Creating replaces a stale link
left by a crash; removing also removes the emptied image and domain
directories.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from vdsm_imageio.ticketspec import Volume

log = logging.getLogger(__name__)


class Links:
    def __init__(self, run_dir: Path) -> None:
        self.root = run_dir / "storage"
        # Creating a link and pruning its emptied parent must not interleave.
        self._lock = threading.Lock()

    def path(self, volume: Volume) -> Path:
        return self.root / volume.sd_id / volume.img_id / volume.vol_id

    def create(self, volume: Volume, target: str) -> Path:
        link = self.path(volume)
        tmp = link.with_name(f".{link.name}.tmp")
        with self._lock:
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            os.symlink(target, tmp)
            os.replace(tmp, link)
        log.info("LINK path=%s target=%s", link, target)
        return link

    def remove(self, volume: Volume) -> None:
        link = self.path(volume)
        with self._lock:
            link.unlink(missing_ok=True)
            for parent in (link.parent, link.parent.parent):
                try:
                    parent.rmdir()
                except OSError:
                    break
        log.info("UNLINK path=%s", link)
