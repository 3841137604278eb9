"""File storage domains: where a volume's file lives.

A file domain is mounted under ``<file_root>/<mount>/`` (vdsm mounts NFS,
GlusterFS and POSIX domains at /rhev/data-center/mnt/<server:_path>); the
volume is ``<mount>/<sd_id>/images/<img_id>/<vol_id>``. Resolving says
which level is missing, since "domain not mounted" and "volume deleted"
need different fixes.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from vdsm_imageio.errors import (
    DomainNotFound,
    ImageNotFound,
    VolumeError,
    VolumeNotFound,
)
from vdsm_imageio.ticketspec import Volume

log = logging.getLogger(__name__)


def find_volume(file_root: Path, volume: Volume) -> Path:
    """The path of volume's file, checked to be a regular file."""
    sd_id, img_id, vol_id = volume.sd_id, volume.img_id, volume.vol_id
    domain = _find_domain(file_root, sd_id)
    if domain is None:
        raise DomainNotFound(
            sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=f"not mounted under {file_root}"
        )
    image = domain / "images" / img_id
    if not image.is_dir():
        raise ImageNotFound(
            sd_id=sd_id, img_id=img_id, vol_id=vol_id, reason=f"no directory {image}"
        )
    path = image / vol_id
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VolumeNotFound(sd_id=sd_id, img_id=img_id, vol_id=vol_id) from None
    except OSError as e:
        raise VolumeError(
            action="prepare",
            sd_id=volume.sd_id,
            vol_id=volume.vol_id,
            reason=f"cannot stat {path}: {e.strerror}",
        ) from None
    if not stat.S_ISREG(mode):
        raise VolumeError(
            action="prepare",
            sd_id=volume.sd_id,
            vol_id=volume.vol_id,
            reason=f"{path} is not a regular file",
        )
    return path


def _find_domain(file_root: Path, sd_id: str) -> Path | None:
    found = sorted(p for p in file_root.glob(f"*/{sd_id}") if p.is_dir())
    if len(found) > 1:
        # Two mounts of one domain is a host misconfiguration; be predictable.
        log.warning(
            "DOMAIN found in several mounts sd=%s mounts=%s using=%s",
            sd_id,
            [str(p.parent) for p in found],
            found[0].parent,
        )
    return found[0] if found else None
