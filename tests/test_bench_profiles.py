"""The bench's storage profiles and result files (not a benchmark).

The sizing and room rules are pure; the fast profile's file system is a
real loop device, ext4 and mount, checked to be gone after the block,
whether it ends normally, by an exception, or by a failed set-up step.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench import profiles, report
from bench.compare import compare, rows, warnings
from tests.support.loopfs import needs_root

MiB = 1024**2
GiB = 1024**3


def bound_loop_devices(backing: Path) -> list[str]:
    """Loop devices whose backing file is backing (deleted or not)."""
    found = []
    for sysfs in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = sysfs.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        if name == str(backing):
            found.append(sysfs.parts[3])
    return found


def mounted(path: Path) -> bool:
    return any(
        line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()
    )


def assert_gone(storage: profiles.Storage) -> None:
    """Nothing of storage is left; what is left is removed, then reported."""
    backing = Path(storage.facts["backing"])
    left = []
    if mounted(storage.root):
        left.append("mount")
        subprocess.run(["umount", "--lazy", str(storage.root)], check=False, timeout=60)
    if storage.root.exists():
        left.append("mount point")
        storage.root.rmdir()
    for name in bound_loop_devices(backing):
        left.append(f"loop device {name}")
        subprocess.run(["losetup", "--detach", f"/dev/{name}"], check=False, timeout=60)
    if backing.exists():
        left.append("backing file")
        backing.unlink()
    assert left == []


# Sizing and room.


@pytest.mark.parametrize("size", [16 * MiB, 2 * GiB, 2 * GiB + 4096])
def test_fast_file_system_holds_the_images_an_upload_and_a_margin(size: int) -> None:
    sparse_data = size // 4
    need = profiles.fast_bytes(size, sparse_data)
    # full + qcow2 + the sparse image's data + one upload target or dd file.
    assert need >= 3 * size + sparse_data + profiles.FS_MARGIN
    assert need % MiB == 0


def test_fast_profile_runs_when_shm_and_memory_have_room() -> None:
    need = 7 * GiB
    assert profiles.shortage(need, shm_free=need, mem_available=need + 2 * GiB) is None


def test_fast_profile_skips_when_shm_is_too_small() -> None:
    reason = profiles.shortage(7 * GiB, shm_free=6 * GiB, mem_available=64 * GiB)
    assert reason is not None and "/dev/shm" in reason


def test_fast_profile_skips_when_memory_cannot_back_shm() -> None:
    # A tmpfs may be larger than the memory that backs it (no swap here).
    reason = profiles.shortage(7 * GiB, shm_free=24 * GiB, mem_available=7 * GiB)
    assert reason is not None and "memory" in reason


# The fast file system itself.


@pytest.mark.loop
def test_fast_storage_is_mounted_ext4_and_removed_after(tmp_path: Path) -> None:
    needs_root()
    with profiles.fast(64 * MiB, mount_base=tmp_path) as storage:
        assert mounted(storage.root)
        assert profiles.fstype(storage.root) in ("ext2/ext3", "ext4")
        assert bound_loop_devices(Path(storage.facts["backing"])) == [
            Path(storage.facts["device"]).name
        ]
        (storage.root / "image.raw").write_bytes(b"x" * MiB)
    assert_gone(storage)


@pytest.mark.loop
def test_failure_inside_fast_storage_leaves_nothing_behind(tmp_path: Path) -> None:
    needs_root()
    seen: list[profiles.Storage] = []
    with pytest.raises(RuntimeError, match="a case failed"):
        with profiles.fast(64 * MiB, mount_base=tmp_path) as storage:
            seen.append(storage)
            # A file held open, as a daemon holds its image, when the run fails.
            with open(storage.root / "held.raw", "wb") as f:
                f.write(b"y" * 4096)
                raise RuntimeError("a case failed")
    assert_gone(seen[0])


@pytest.mark.loop
def test_failed_set_up_undoes_the_steps_already_made(tmp_path: Path) -> None:
    needs_root()
    backing = profiles.SHM / f"vdsm-bench-fast-{os.getpid()}.img"
    # Too small for ext4: mkfs fails after the backing file and the loop
    # device exist.
    with pytest.raises(RuntimeError, match=r"mkfs\.ext4 failed"):
        with profiles.fast(16 * 1024, mount_base=tmp_path):
            pytest.fail("the block must not run")
    assert bound_loop_devices(backing) == []
    assert not backing.exists()
    assert list(tmp_path.iterdir()) == []


# Results.


def _doc(ours: float, theirs: float, cpu: float, libnbd: float) -> dict[str, object]:
    def side(median: float, cpu_per_gib: float | None = None) -> dict[str, object]:
        return {"status": "ok", "median": median, "runs": [median], "cpu_s_per_gib": cpu_per_gib}

    return {
        "schema": report.SCHEMA,
        "profile": "fast",
        "config": {"size": GiB, "runs": 3, "tuned_buffer_size": None},
        "cases": [
            {
                "id": "nbd-download-unix-curl",
                "metrics": [
                    {
                        "name": "nbd download unix curl",
                        "unit": "MiB/s",
                        "higher_better": True,
                        "ours": side(ours, cpu),
                        "theirs": side(theirs, 1.0),
                        "ours-libnbd": side(libnbd, 2 * cpu),
                    }
                ],
            }
        ],
        "physical": {"dd O_DIRECT read": 6000.0},
    }


def test_compare_gives_new_over_old_for_ours_and_a_third_daemon() -> None:
    old, new = _doc(1000, 800, 0.5, 900), _doc(1500, 1000, 0.4, 900)
    found = {r.label: r for r in compare(old, new)}
    ours = found["nbd download unix curl"]
    assert ours.change == pytest.approx(1.5)
    assert ours.old_ratio == pytest.approx(1.25)
    assert ours.new_ratio == pytest.approx(1.5)
    assert ours.cpu_change == pytest.approx(0.8)
    assert found["nbd download unix curl [ours-libnbd]"].change == pytest.approx(1.0)
    assert set(rows(new)) == {
        ("nbd-download-unix-curl", "nbd download unix curl"),
        ("nbd-download-unix-curl", "nbd download unix curl [ours-libnbd]"),
    }


def test_compare_warns_when_runs_are_not_alike() -> None:
    old, new = _doc(1, 1, 1, 1), _doc(1, 1, 1, 1)
    assert warnings(old, new) == []
    new["profile"] = "disk"
    assert warnings(old, new) == ["profile differs: fast -> disk"]


@pytest.mark.parametrize(
    "throughput, cpu, keep",
    [
        (1.10, 1.0, True),
        (1.0, 0.90, True),
        (1.09, 0.91, False),
        (0.8, 1.2, False),
        (None, 0.5, None),
    ],
)
def test_nbdwire_stays_only_with_a_gain_of_ten_percent(
    throughput: float | None, cpu: float | None, keep: bool | None
) -> None:
    assert report.NbdwireVerdict(throughput, cpu).keep is keep
