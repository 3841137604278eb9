"""Configuration: every option declared once, with its default and why.

Sources, later wins: the built-in defaults below, the ``--local DIR``
profile, then every ``*.conf`` in each config dir's ``conf.d/`` ordered by
file name, then command-line flags. Conf files are INI; an unknown section
or option, or a value of the wrong type, is an error that names the file,
the section and the option: a typo must not silently keep a default.

A list option (a tuple default) is written as absolute paths separated by
commas or new lines; ``--local`` and tests may pass a tuple.

Socket addresses: a value starting with ``@`` names an abstract unix
socket (``@/org/ovirt/imageio`` is ``"\\0/org/ovirt/imageio"``); anything
else is a path; an empty value disables the listener.
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _opt(default: Any, why: str, minimum: int | None = None) -> Any:
    return field(default=default, metadata={"why": why, "minimum": minimum})


# The option table reads best with one option per line.
# fmt: off
@dataclass(frozen=True)
class Daemon:
    run_dir: str = _opt("/run/vdsm-imageio", "runtime state: links of prepared volumes, nbd sockets")
    user: str = _opt("", "drop privileges to this user after binding (empty: stay)")
    group: str = _opt("", "drop privileges to this group after binding (empty: stay)")
    remove_timeout: float = _opt(30.0, "seconds Ticket.remove waits for requests to stop before TicketBusy")
    expired_ticket_grace: float = _opt(0.0, "seconds an expired ticket stays before it is removed; 0 keeps it until vdsm removes it, as vdsm expects")
    drop_privileges: bool = _opt(False, "whether to switch to user/group after binding")


@dataclass(frozen=True)
class Tls:
    enable: bool = _opt(True, "serve HTTPS; engine and remote clients need it")
    host: str = _opt("", "address to bind; empty binds every address like ovirt-imageio")
    port: int = _opt(54322, "the port engine and clients expect for image transfer")
    key_file: str = _opt("/etc/pki/vdsm/keys/vdsmkey.pem", "server private key")
    cert_file: str = _opt("/etc/pki/vdsm/certs/vdsmcert.pem", "server certificate")
    ca_file: str = _opt("/etc/pki/vdsm/certs/cacert.pem", "CA for client certificates")
    enable_client_auth: bool = _opt(False, "require client certificates signed by ca_file")
    handshake_timeout: float = _opt(10.0, "seconds a client has to finish the TLS handshake")


@dataclass(frozen=True)
class Local:
    enable: bool = _opt(True, "serve plain HTTP on a unix socket for local clients (faster)")
    socket: str = _opt("@/org/ovirt/imageio", "abstract socket clients find via OPTIONS")


@dataclass(frozen=True)
class Control:
    socket: str = _opt("/run/vdsm-imageio/control.sock", "JSON-RPC control channel for vdsm")
    mode: int = _opt(0o660, "permissions of the control socket: vdsm's group may use it")
    ticket_socket: str = _opt("/run/vdsm-imageio/tickets.sock", "ovirt-imageio's HTTP ticket API for an unmodified vdsm (mode as above); empty disables")
    ticket_port: int = _opt(0, "the same HTTP ticket API on TCP, as the engine drives a proxy on its own host (54324 by convention); 0 disables", minimum=0)
    ticket_host: str = _opt("127.0.0.1", "address the TCP ticket API binds; it has no authentication, so only a loopback address unless allow_remote_tickets")
    allow_remote_tickets: bool = _opt(False, "let ticket_host be an address other hosts reach: anyone who can connect to it adds tickets")


@dataclass(frozen=True)
class BackendHttp:
    ca_file: str = _opt("", "CA that signs the host daemons' certificates, for tickets whose url is https:// (proxy mode); empty uses [tls] ca_file")
    cert_file: str = _opt("", "client certificate presented to host daemons that require one; empty presents none")
    key_file: str = _opt("", "private key of cert_file; empty when cert_file holds it")
    connect_timeout: float = _opt(10.0, "seconds to connect to a host daemon and finish TLS before the request fails with 502")
    timeout: float = _opt(60.0, "seconds a host daemon may stay silent during a request before it fails with 504")
    unix_socket: bool = _opt(True, "reach a host daemon on this machine through the unix socket it advertises instead of TLS")


@dataclass(frozen=True)
class Http:
    buffer_size: int = _opt(4 * 1024**2, "size of each I/O buffer; large buffers amortize syscalls", minimum=64 * 1024)
    buffer_pool_bytes: int = _opt(160 * 1024**2, "I/O buffer memory shared by all connections", minimum=64 * 1024)
    nbd_splice: bool = _opt(True, "NBD downloads over the unix socket splice each read from NBD connections of our own (backends/nbdwire) instead of copying through libnbd; kept while the bench case nbd-download-unix-curl measures what the hand-written reader gains")
    parallel_reads: int = _opt(2, "reads in flight per download (zero-copy file downloads, NBD exports: one more NBD connection each); 1 reads one piece at a time", minimum=1)
    unix_send_buffer: int = _opt(4 * 1024**2, "SO_SNDBUF of unix socket connections: a download can run this far ahead of its client, who then takes it in few large reads instead of one per default socket buffer (212 KiB); the kernel caps it at net.core.wmem_max; 0 keeps the kernel's default", minimum=0)
    max_connections: int = _opt(256, "authorized connections (a request proved a live ticket) served at once, over every listener; unauthenticated ones never take these slots, so at most max_connections + max_unauthenticated sockets are open (256 + 64)", minimum=1)
    max_unauthenticated: int = _opt(64, "connections that have not proved a ticket yet (TLS handshake, request head, OPTIONS *); when full the oldest is closed to admit a new one, never the new one refused", minimum=1)
    max_unauthenticated_per_peer: int = _opt(16, "unauthenticated connections per client address (IPv6: per /64, unix socket: per uid); when full that peer's oldest is closed; raise it behind a proxy", minimum=1)
    max_readers: int = _opt(8, "reading connections per ticket, advertised and enforced", minimum=1)
    max_writers: int = _opt(8, "writing connections per ticket, advertised and enforced", minimum=1)
    header_timeout: float = _opt(10.0, "seconds an unauthenticated connection has to send a complete request head; the first head's count starts at accept, so the TLS handshake is part of it")
    max_header_bytes: int = _opt(16 * 1024, "request head limit; larger heads get 431")
    max_json_body: int = _opt(4096, "PATCH body limit; larger bodies get 413 unread")
    default_inactivity_timeout: int = _opt(60, "idle seconds before an authorized connection closes")
    progress_interval: float = _opt(1.0, "seconds between Ticket.progress notifications of a moving ticket; bounds the event rate")


@dataclass(frozen=True)
class Storage:
    file_root: str = _opt("/rhev/data-center/mnt", "where file storage domains are mounted")
    url_roots: tuple[str, ...] = _opt(("/rhev/data-center/mnt", "/run/vdsm", "/run/vdsm-imageio", "/dev"), "where a url ticket may point after symlinks (file domains, vdsm's and our nbd sockets, block devices): defence in depth for a service running as root")


@dataclass(frozen=True)
class Hooks:
    dir: str = _opt("/etc/vdsm-imageio/hooks", "hook executables, one directory per event")
    timeout: float = _opt(30.0, "seconds a hook may run before it is killed and counts as failed")
    transfer_record: str = _opt("/var/log/vdsm-imageio/transfers.jsonl", "file the shipped transfer-record hook appends to (TRANSFER_RECORD)")


@dataclass(frozen=True)
class Logging:
    level: str = _opt("INFO", "root log level")
    file: str = _opt("", "log file with rotation; empty logs to stderr")
    max_bytes: int = _opt(20 * 1024**2, "size at which the log file rotates")
    backups: int = _opt(10, "rotated log files kept")


# fmt: on


@dataclass(frozen=True)
class Config:
    daemon: Daemon = field(default_factory=Daemon)
    tls: Tls = field(default_factory=Tls)
    local: Local = field(default_factory=Local)
    control: Control = field(default_factory=Control)
    http: Http = field(default_factory=Http)
    backend_http: BackendHttp = field(default_factory=BackendHttp)
    storage: Storage = field(default_factory=Storage)
    hooks: Hooks = field(default_factory=Hooks)
    logging: Logging = field(default_factory=Logging)

    def to_json(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


class ConfigError(Exception):
    pass


def local_profile(config: Config, local_dir: Path) -> Config:
    """Everything under local_dir, on loopback only (DESIGN.md section 4)."""
    d = local_dir.resolve()
    # Two local daemons must not share the abstract data socket.
    tag = hashlib.sha256(str(d).encode()).hexdigest()[:16]
    return update(
        config,
        {
            "daemon": {"run_dir": str(d / "run")},
            "tls": {
                "host": "127.0.0.1",
                "key_file": str(d / "pki/server.key"),
                "cert_file": str(d / "pki/server.pem"),
                "ca_file": str(d / "pki/ca.pem"),
            },
            "local": {"socket": f"@/org/vdsm-imageio/local/{tag}"},
            "control": {
                "socket": str(d / "control.sock"),
                "ticket_socket": str(d / "tickets.sock"),
            },
            # Tickets may point only into DIR: the profile needs nothing else.
            "storage": {"file_root": str(d / "images"), "url_roots": (str(d),)},
            "hooks": {"dir": str(d / "hooks"), "transfer_record": str(d / "transfers.jsonl")},
            "logging": {"file": ""},
        },
    )


def proxy_profile(config: Config, local_dir: Path) -> Config:
    """A proxy beside the ``--local`` daemon of local_dir (DESIGN.md section 12).

    Its sockets, run directory, hooks and conf.d live in local_dir/proxy;
    it serves TLS on 54323 and the ticket API on 127.0.0.1:54324, the ports
    an engine host uses, and trusts the local daemon through the CA both
    share in local_dir/pki.
    """
    d = local_dir.resolve()
    p = d / "proxy"
    tag = hashlib.sha256(str(p).encode()).hexdigest()[:16]
    return update(
        local_profile(config, local_dir),
        {
            "daemon": {"run_dir": str(p / "run")},
            "tls": {"port": PROXY_PORT},
            "local": {"socket": f"@/org/vdsm-imageio/local/{tag}"},
            "control": {
                "socket": str(p / "control.sock"),
                "ticket_socket": str(p / "tickets.sock"),
                "ticket_port": PROXY_TICKET_PORT,
            },
            "backend_http": {"ca_file": str(d / "pki/ca.pem")},
            "hooks": {"dir": str(p / "hooks"), "transfer_record": str(p / "transfers.jsonl")},
        },
    )


# The ports of ovirt-imageio's proxy on an engine host, which the engine
# and its clients expect.
PROXY_PORT = 54323
PROXY_TICKET_PORT = 54324
MAX_PORT = 65535


def validate(config: Config) -> None:
    """Rules that span options; ConfigError names the options."""
    control = config.control
    if control.ticket_port > MAX_PORT:
        raise ConfigError(
            f"[control] ticket_port: expected at most {MAX_PORT}, got {control.ticket_port}"
        )
    if control.ticket_port and not control.allow_remote_tickets:
        if not is_loopback(control.ticket_host):
            raise ConfigError(
                f"[control] ticket_host: {control.ticket_host or '(every address)'} is not a "
                "loopback address, and the ticket API has no authentication: anyone who "
                "reaches it adds tickets; set [control] allow_remote_tickets = true to bind it"
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name (or nothing: every address) may resolve anywhere.
        return False


def load(config: Config, config_dirs: list[Path]) -> Config:
    for config_dir in config_dirs:
        for path in sorted((config_dir / "conf.d").glob("*.conf")):
            config = update(config, read_file(path), source=str(path))
    return config


def read_file(path: Path) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, configparser.Error) as e:
        raise ConfigError(f"{path}: {e}") from None
    return {s: dict(parser.items(s)) for s in parser.sections()}


def update(config: Config, values: dict[str, dict[str, Any]], source: str = "") -> Config:
    """Return config with values (strings from files, or typed) applied."""
    where = f"{source}: " if source else ""
    sections = {f.name: f for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for section_name, options in values.items():
        if section_name not in sections:
            raise ConfigError(f"{where}unknown section [{section_name}]")
        section = getattr(config, section_name)
        known = {f.name: f for f in dataclasses.fields(section)}
        typed = {}
        for name, value in options.items():
            if name not in known:
                raise ConfigError(f"{where}unknown option {name!r} in [{section_name}]")
            typed[name] = _convert(
                value, type(getattr(section, name)), f"{where}[{section_name}] {name}"
            )
            minimum = known[name].metadata["minimum"]
            if minimum is not None and typed[name] < minimum:
                raise ConfigError(
                    f"{where}[{section_name}] {name}: expected at least "
                    f"{minimum}, got {typed[name]!r}"
                )
        changes[section_name] = dataclasses.replace(changes.get(section_name, section), **typed)
    return dataclasses.replace(config, **changes)


def _convert(value: Any, kind: type, where: str) -> Any:
    if kind is tuple:
        return _paths(value, where)
    if not isinstance(value, str):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not kind:
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
        return value
    text = value.strip()
    try:
        if kind is bool:
            return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[
                text.lower()
            ]
        if kind is int:
            return int(text, 0)
        if kind is float:
            return float(text)
    except (KeyError, ValueError):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    return text


def _paths(value: Any, where: str) -> tuple[str, ...]:
    """A list of absolute paths, from a conf-file string or a sequence."""
    if isinstance(value, str):
        items = [p.strip() for p in re.split(r"[,\n]", value)]
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        items = [p.strip() for p in value]
    else:
        raise ConfigError(f"{where}: expected absolute paths, got {value!r}")
    paths = tuple(p for p in items if p)
    relative = [p for p in paths if not p.startswith("/")]
    if relative:
        raise ConfigError(f"{where}: expected absolute paths, got {relative[0]!r}")
    return paths


def socket_address(value: str) -> str:
    """Conf-file socket notation to a bind address ('@name' is abstract)."""
    return "\0" + value[1:] if value.startswith("@") else value


def describe() -> dict[str, dict[str, str]]:
    """Every option with its why, for --help-config style output and docs."""
    out: dict[str, dict[str, str]] = {}
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        out[section.name] = {f.name: f.metadata["why"] for f in dataclasses.fields(value)}
    return out
