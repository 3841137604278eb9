"""[storage] url_roots: where a url ticket may point (vdsm_imageio.urlroots)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from vdsm_imageio import config
from vdsm_imageio.backends.nbd import parse_url
from vdsm_imageio.backends.opener import resolve_url
from vdsm_imageio.config import Config, ConfigError
from vdsm_imageio.errors import Forbidden, InvalidTicket
from vdsm_imageio.ticketspec import TicketSpec, parse
from vdsm_imageio.urlroots import UrlRoots, within


@pytest.mark.parametrize(
    "path, root, inside",
    [
        ("/a/b", "/a", True),
        ("/a", "/a", True),
        ("/a/", "/a/", True),
        ("/ab", "/a", False),
        ("/a/b", "/a/", True),
        ("/etc/shadow", "/", True),
        ("/etc/shadow", "/rhev/data-center/mnt", False),
        ("/dev/dm-3", "/dev", True),
        ("/devices", "/dev", False),
    ],
)
def test_within_is_by_path_component(path: str, root: str, inside: bool) -> None:
    assert within(path, root) is inside


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "images").mkdir(parents=True)
    (r / "images" / "disk.raw").write_bytes(b"x" * 4096)
    return r


def test_file_under_a_root_resolves_to_itself(root: Path) -> None:
    disk = str(root / "images" / "disk.raw")
    assert UrlRoots([str(root)]).resolve(disk) == disk


def test_etc_shadow_is_outside_the_default_roots() -> None:
    with pytest.raises(InvalidTicket) as e:
        UrlRoots(Config().storage.url_roots).resolve("/etc/shadow")
    assert e.value.field == "url"
    assert "url_roots" in str(e.value)


def test_symlink_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.write_text("secret")
    (root / "images" / "link").symlink_to(outside)
    with pytest.raises(InvalidTicket) as e:
        UrlRoots([str(root)]).resolve(str(root / "images" / "link"))
    assert e.value.field == "url"
    assert str(outside) in str(e.value)


def test_symlinked_directory_out_of_the_root_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "disk.raw").write_bytes(b"y")
    (root / "images" / "dir").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidTicket):
        UrlRoots([str(root)]).resolve(str(root / "images" / "dir" / "disk.raw"))


@pytest.mark.parametrize(
    "tail",
    [
        "images/../../secret",
        "images/../../root/../secret",
        "../secret",
        "images/./../../secret",
    ],
)
def test_dot_dot_out_of_the_root_is_refused(root: Path, tmp_path: Path, tail: str) -> None:
    (tmp_path / "secret").write_text("secret")
    with pytest.raises(InvalidTicket):
        UrlRoots([str(root)]).resolve(f"{root}/{tail}")


def test_dot_dot_through_a_symlink_follows_the_link_first(root: Path, tmp_path: Path) -> None:
    # root/images/up -> tmp/a/b: "up/.." is tmp/a, outside, not root/images.
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "disk.raw").write_bytes(b"z")
    (root / "images" / "up").symlink_to(tmp_path / "a" / "b")
    with pytest.raises(InvalidTicket):
        UrlRoots([str(root)]).resolve(f"{root}/images/up/../disk.raw")


def test_symlink_inside_the_root_resolves_to_its_target(root: Path) -> None:
    (root / "images" / "alias").symlink_to("disk.raw")
    real = str(root / "images" / "disk.raw")
    assert UrlRoots([str(root)]).resolve(str(root / "images" / "alias")) == real


def test_a_root_that_is_a_symlink_is_resolved_too(root: Path, tmp_path: Path) -> None:
    (tmp_path / "root-link").symlink_to(root)
    disk = str(root / "images" / "disk.raw")
    assert UrlRoots([str(tmp_path / "root-link")]).resolve(disk) == disk


def test_missing_file_outside_the_roots_does_not_reveal_existence(root: Path) -> None:
    with pytest.raises(InvalidTicket) as e:
        UrlRoots([str(root)]).resolve("/nonexistent/x")
    assert "outside" in str(e.value)


def test_empty_roots_refuse_everything(root: Path) -> None:
    with pytest.raises(InvalidTicket):
        UrlRoots([]).resolve(str(root / "images" / "disk.raw"))


def test_nul_in_the_path_is_invalid_ticket(root: Path) -> None:
    with pytest.raises(InvalidTicket):
        UrlRoots([str(root)]).resolve(f"{root}/images/a\0b")


# Opening: the descriptor must still be the resolved path.


def test_opened_file_at_the_resolved_path_passes(root: Path) -> None:
    disk = str(root / "images" / "disk.raw")
    fd = os.open(disk, os.O_RDONLY)
    try:
        UrlRoots([str(root)]).check_opened(fd, disk)
    finally:
        os.close(fd)


def test_directory_swapped_for_a_link_after_the_add_is_refused_at_open(
    root: Path, tmp_path: Path
) -> None:
    sub = root / "images" / "sub"
    sub.mkdir()
    (sub / "disk.raw").write_bytes(b"mine")
    roots = UrlRoots([str(root)])
    resolved = roots.resolve(str(sub / "disk.raw"))
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "disk.raw").write_bytes(b"theirs")
    sub.rename(root / "images" / "sub.old")
    sub.symlink_to(tmp_path / "evil")
    fd = os.open(resolved, os.O_RDONLY)
    try:
        with pytest.raises(Forbidden):
            roots.check_opened(fd, resolved)
    finally:
        os.close(fd)


def test_socket_swapped_for_a_link_is_refused(root: Path, tmp_path: Path) -> None:
    path = root / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        roots = UrlRoots([str(root)])
        resolved = roots.resolve(str(path))
        roots.check_unmoved(resolved)
        path.unlink()
        path.symlink_to(tmp_path / "other.sock")
        with pytest.raises(Forbidden):
            roots.check_unmoved(resolved)


# resolve_url: the URL the ticket is served through.


def spec(url: str) -> TicketSpec:
    return parse(
        {"uuid": "u", "size": 1, "ops": ["read"], "timeout": 1, "url": url},
        default_inactivity_timeout=60,
    )


def test_file_url_is_served_through_the_resolved_path(root: Path) -> None:
    (root / "images" / "alias").symlink_to("disk.raw")
    url = (root / "images" / "alias").as_uri()
    resolved = resolve_url(spec(url), UrlRoots([str(root)]))
    assert resolved == (root / "images" / "disk.raw").as_uri()


def test_percent_encoded_dot_dot_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("secret")
    url = f"file://{root}/images/%2e%2e/%2E%2E/secret"
    with pytest.raises(InvalidTicket) as e:
        resolve_url(spec(url), UrlRoots([str(root)]))
    assert e.value.field == "url"


def test_nbd_socket_is_confined_and_keeps_its_export(root: Path, tmp_path: Path) -> None:
    inside = root / "nbd.sock"
    outside = tmp_path / "nbd.sock"
    (root / "alias.sock").symlink_to(inside)
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(str(inside))
        b.bind(str(outside))
        roots = UrlRoots([str(root)])
        url = f"nbd:unix:{root}/alias.sock:exportname=sda"
        assert resolve_url(spec(url), roots) == f"nbd:unix:{inside}:exportname=sda"
        with pytest.raises(InvalidTicket) as e:
            resolve_url(spec(f"nbd:unix:{outside}"), roots)
        assert e.value.field == "url"


def test_standard_nbd_uri_is_confined_and_keeps_its_form(root: Path, tmp_path: Path) -> None:
    (root / "my dir").mkdir()
    inside = root / "my dir" / "nbd.sock"
    outside = tmp_path / "nbd.sock"
    (root / "alias.sock").symlink_to(inside)
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(str(inside))
        b.bind(str(outside))
        roots = UrlRoots([str(root)])
        url = f"nbd+unix:///sd%20a?socket={root}/alias.sock"
        resolved = resolve_url(spec(url), roots)
        assert resolved == f"nbd+unix:///sd%20a?socket={root}/my%20dir/nbd.sock"
        assert parse_url(resolved) == (str(inside), "sd a")
        for refused in (
            f"nbd+unix:///sda?socket={outside}",
            f"nbd+unix:///sda?socket={root}/../{outside.parent.name}/nbd.sock",
            f"nbd+unix:///sda?socket={root}/%2e%2e/{outside.parent.name}/nbd.sock",
        ):
            with pytest.raises(InvalidTicket) as e:
                resolve_url(spec(refused), roots)
            assert e.value.field == "url"
            assert "url_roots" in e.value.message


@pytest.mark.parametrize(
    "url", ["nbd+unix:///sda", "nbd+unix://host/sda?socket=/x", "nbd+unix:///a?socket=/x&tls=on"]
)
def test_malformed_nbd_uri_is_refused_naming_url(root: Path, url: str) -> None:
    with pytest.raises(InvalidTicket) as e:
        resolve_url(spec(url), UrlRoots([str(root)]))
    assert e.value.field == "url"


# Configuration.


def test_url_roots_from_a_conf_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d" / "50.conf"
    conf.parent.mkdir()
    conf.write_text("[storage]\nurl_roots = /rhev/data-center/mnt, /data\n  /dev\n")
    cfg = config.load(Config(), [tmp_path])
    assert cfg.storage.url_roots == ("/rhev/data-center/mnt", "/data", "/dev")


def test_relative_url_root_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d" / "50.conf"
    conf.parent.mkdir()
    conf.write_text("[storage]\nurl_roots = /dev, images\n")
    with pytest.raises(ConfigError) as e:
        config.load(Config(), [tmp_path])
    assert "[storage] url_roots" in str(e.value) and "'images'" in str(e.value)


def test_local_profile_confines_tickets_to_its_directory(tmp_path: Path) -> None:
    cfg = config.local_profile(Config(), tmp_path)
    assert cfg.storage.url_roots == (str(tmp_path.resolve()),)


def test_default_roots_fit_ovirt_layout() -> None:
    roots = Config().storage.url_roots
    assert Config().storage.file_root in roots
    assert Config().daemon.run_dir in roots
    assert "/dev" in roots
