"""Start-up failures end cleanly, with a message, not a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]


def test_data_socket_in_use_fails_start_with_a_message(daemon: Daemon, tmp_path: Path) -> None:
    # A second daemon configured with the first one's abstract data socket.
    (tmp_path / "conf.d").mkdir()
    name = daemon.unix_socket.lstrip("\0")
    (tmp_path / "conf.d" / "50-clash.conf").write_text(f"[local]\nsocket = @{name}\n")
    proc = subprocess.run(
        [str(REPO / ".venv/bin/vdsm-imageio"), "serve", "--local", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "START failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ready data=" not in proc.stderr
    # The first daemon is unharmed.
    assert daemon.result("Service.info")["unix_socket"] == daemon.unix_socket
