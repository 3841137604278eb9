from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vdsm_imageio import config
from vdsm_imageio.config import Config, ConfigError


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_every_option_has_a_why() -> None:
    described = config.describe()
    for section, options in described.items():
        assert options, section
        for name, why in options.items():
            assert why.strip(), f"{section}.{name}"


def test_dropins_apply_in_file_name_order(tmp_path: Path) -> None:
    write(tmp_path / "conf.d/20-b.conf", "[http]\nmax_readers = 3\n")
    write(tmp_path / "conf.d/10-a.conf", "[http]\nmax_readers = 2\nmax_writers = 5\n")
    cfg = config.load(Config(), [tmp_path])
    assert cfg.http.max_readers == 3
    assert cfg.http.max_writers == 5


def test_later_config_dir_wins(tmp_path: Path) -> None:
    write(tmp_path / "a/conf.d/99.conf", "[tls]\nport = 1000\n")
    write(tmp_path / "b/conf.d/00.conf", "[tls]\nport = 2000\n")
    cfg = config.load(Config(), [tmp_path / "a", tmp_path / "b"])
    assert cfg.tls.port == 2000


def test_files_not_ending_in_conf_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "conf.d/50.conf.rpmsave", "[tls]\nport = 1\n")
    assert config.load(Config(), [tmp_path]).tls.port == 54322


@pytest.mark.parametrize(
    "text, message",
    [
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("[tls]\nprot = 1\n", "unknown option 'prot' in [tls]"),
        ("[tls]\nport = many\n", "[tls] port: expected int"),
        ("[tls]\nenable = maybe\n", "[tls] enable: expected bool"),
        ("[tls\nport = 1\n", "50.conf"),
        ("[http]\nparallel_reads = 0\n", "[http] parallel_reads: expected at least 1, got 0"),
        ("[http]\nmax_readers = -1\n", "[http] max_readers: expected at least 1, got -1"),
        ("[http]\nbuffer_size = 4096\n", "[http] buffer_size: expected at least 65536"),
        ("[http]\nunix_send_buffer = -1\n", "[http] unix_send_buffer: expected at least 0, got -1"),
        ("[http]\nunix_send_buffer = 4M\n", "[http] unix_send_buffer: expected int"),
    ],
)
def test_bad_dropin_names_file_section_option(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "conf.d/50.conf", text)
    with pytest.raises(ConfigError) as e:
        config.load(Config(), [tmp_path])
    assert message in str(e.value)
    assert "50.conf" in str(e.value)


def test_typed_values_are_converted(tmp_path: Path) -> None:
    write(
        tmp_path / "conf.d/1.conf",
        "[daemon]\nremove_timeout = 2\n[control]\nmode = 0o600\n[tls]\nenable = no\n",
    )
    cfg = config.load(Config(), [tmp_path])
    assert cfg.daemon.remove_timeout == 2.0
    assert cfg.control.mode == 0o600
    assert cfg.tls.enable is False


def test_abstract_socket_is_written_with_at() -> None:
    assert config.socket_address("@/org/ovirt/imageio") == "\0/org/ovirt/imageio"
    assert config.socket_address("/run/x.sock") == "/run/x.sock"


def test_local_profile_puts_everything_under_dir(tmp_path: Path) -> None:
    cfg = config.local_profile(Config(), tmp_path)
    assert cfg.tls.host == "127.0.0.1"
    assert cfg.tls.ca_file == str(tmp_path / "pki/ca.pem")
    assert cfg.control.socket == str(tmp_path / "control.sock")
    assert cfg.storage.file_root == str(tmp_path / "images")
    assert cfg.hooks.dir == str(tmp_path / "hooks")


def test_local_profiles_of_two_dirs_use_different_data_sockets(tmp_path: Path) -> None:
    a = config.local_profile(Config(), tmp_path / "a")
    b = config.local_profile(Config(), tmp_path / "b")
    assert a.local.socket.startswith("@")
    assert a.local.socket != b.local.socket


def test_show_config_prints_effective_json(tmp_path: Path) -> None:
    write(tmp_path / "conf.d/50.conf", "[http]\nbuffer_size = 1048576\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vdsm_imageio.cli",
            "serve",
            "--local",
            str(tmp_path),
            "--port",
            "0",
            "--show-config",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    shown = json.loads(out)
    assert shown["http"]["buffer_size"] == 1048576
    assert shown["tls"]["port"] == 0
    assert shown["control"]["socket"] == str(tmp_path.resolve() / "control.sock")


def test_proxy_profile_sits_beside_the_local_daemon(tmp_path: Path) -> None:
    local = config.local_profile(Config(), tmp_path)
    proxy = config.proxy_profile(Config(), tmp_path)
    d = tmp_path.resolve()
    assert (proxy.tls.port, proxy.control.ticket_port) == (54323, 54324)
    assert proxy.control.ticket_host == "127.0.0.1"
    # Its own sockets and run directory, the host daemon's CA.
    assert proxy.control.socket == str(d / "proxy/control.sock")
    assert proxy.control.ticket_socket == str(d / "proxy/tickets.sock")
    assert proxy.daemon.run_dir == str(d / "proxy/run")
    assert proxy.local.socket != local.local.socket
    assert proxy.tls.port != local.tls.port
    assert proxy.backend_http.ca_file == local.tls.ca_file == str(d / "pki/ca.pem")
    assert proxy.tls.cert_file == local.tls.cert_file


def test_ticket_api_on_tcp_is_off_by_default() -> None:
    assert Config().control.ticket_port == 0
    config.validate(Config())


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_ticket_api_binds_loopback_addresses(host: str) -> None:
    cfg = config.update(Config(), {"control": {"ticket_port": 54324, "ticket_host": host}})
    config.validate(cfg)


@pytest.mark.parametrize("host", ["", "0.0.0.0", "::", "192.0.2.7", "engine.example.com"])
def test_ticket_api_refuses_other_addresses_unless_allowed(host: str) -> None:
    cfg = config.update(Config(), {"control": {"ticket_port": 54324, "ticket_host": host}})
    with pytest.raises(ConfigError) as e:
        config.validate(cfg)
    assert "[control] ticket_host" in str(e.value)
    assert "allow_remote_tickets" in str(e.value)
    allowed = config.update(cfg, {"control": {"allow_remote_tickets": True}})
    config.validate(allowed)


def test_ticket_port_past_65535_is_refused() -> None:
    cfg = config.update(Config(), {"control": {"ticket_port": 65536}})
    with pytest.raises(ConfigError, match=r"\[control\] ticket_port"):
        config.validate(cfg)


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vdsm_imageio.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_proxy_needs_local_dir(tmp_path: Path) -> None:
    out = _serve("--proxy", "--show-config")
    assert out.returncode == 2
    assert "--proxy needs --local DIR" in out.stderr


def test_proxy_reads_its_own_dropins(tmp_path: Path) -> None:
    write(tmp_path / "conf.d/50.conf", "[http]\nmax_readers = 3\n")
    write(tmp_path / "proxy/conf.d/50.conf", "[backend_http]\ntimeout = 7\n")
    out = _serve("--local", str(tmp_path), "--proxy", "--show-config")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["backend_http"]["timeout"] == 7.0
    assert shown["http"]["max_readers"] == 8
    assert shown["tls"]["port"] == 54323


def test_a_public_ticket_api_stops_the_start(tmp_path: Path) -> None:
    write(tmp_path / "conf.d/50.conf", "[control]\nticket_port = 54324\nticket_host = 0.0.0.0\n")
    out = _serve("--local", str(tmp_path), "--show-config")
    assert out.returncode == 2
    assert "configuration error: [control] ticket_host: 0.0.0.0 is not a loopback" in out.stderr
