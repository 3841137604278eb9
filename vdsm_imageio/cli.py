"""The ``vdsm-imageio`` command: serve, call, upload, download, checksum."""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import signal
import sys
from pathlib import Path

from . import config as configmod
from . import systemd

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = Path("/etc/vdsm-imageio")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "call":
        from . import callclient

        return callclient.main(args[1:])
    if args and args[0] in ("upload", "download", "checksum"):
        from .client import cli as client_cli

        return client_cli.main(args[0], args[1:])
    parser = _parser()
    ns = parser.parse_args(args)
    if ns.command == "serve":
        return serve(ns)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdsm-imageio", description="Disk image transfer service for oVirt hosts"
    )
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="run the service")
    serve_p.add_argument(
        "--config-dir",
        action="append",
        type=Path,
        default=[],
        help="read DIR/conf.d/*.conf (repeatable; later wins)",
    )
    serve_p.add_argument(
        "--local",
        type=Path,
        metavar="DIR",
        help="self-contained profile: everything under DIR, loopback only",
    )
    serve_p.add_argument(
        "--proxy",
        action="store_true",
        help="with --local: a proxy beside DIR's daemon, under DIR/proxy "
        "(TLS 54323, ticket API on 127.0.0.1:54324)",
    )
    serve_p.add_argument("--port", type=int, help="TLS port (0 picks a free port)")
    serve_p.add_argument(
        "--show-config",
        action="store_true",
        help="print the effective configuration as JSON and exit",
    )
    sub.add_parser("call", help="call a control-channel verb (see call --help)")
    sub.add_parser("upload", help="upload an image to a transfer URL (see upload --help)")
    sub.add_parser("download", help="download a transfer URL's disk (see download --help)")
    sub.add_parser("checksum", help="checksum of an image or a transfer URL's disk")
    return parser


def effective_config(ns: argparse.Namespace) -> configmod.Config:
    cfg = configmod.Config()
    dirs: list[Path] = list(ns.config_dir)
    if ns.proxy and ns.local is None:
        raise configmod.ConfigError("--proxy needs --local DIR")
    if ns.local is not None:
        if ns.proxy:
            cfg = configmod.proxy_profile(cfg, ns.local)
            dirs.insert(0, ns.local / "proxy")
        else:
            cfg = configmod.local_profile(cfg, ns.local)
            dirs.insert(0, ns.local)
    elif not dirs:
        dirs = [DEFAULT_CONFIG_DIR]
    cfg = configmod.load(cfg, dirs)
    if ns.port is not None:
        cfg = configmod.update(cfg, {"tls": {"port": ns.port}})
    configmod.validate(cfg)
    return cfg


def serve(ns: argparse.Namespace) -> int:
    try:
        cfg = effective_config(ns)
    except configmod.ConfigError as e:
        print(f"vdsm-imageio: configuration error: {e}", file=sys.stderr)
        return 2
    if ns.show_config:
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    try:
        who = _identity(cfg)
    except systemd.IdentityError as e:
        print(f"vdsm-imageio: configuration error: {e}", file=sys.stderr)
        return 2
    _setup_logging(cfg)
    if ns.local is not None:
        _prepare_local(ns.local, proxy=ns.proxy)
    from .services import Services

    services = Services(cfg)
    # Before any thread starts: a signal during start-up is waited for too.
    signals = systemd.Signals([signal.SIGTERM, signal.SIGINT])
    try:
        services.start()
    except OSError as e:
        log.error("START failed reason=%s", e)
        services.stop()
        return 1
    if who is not None:
        # Everything that needs root at start is done; hand over what we made.
        try:
            systemd.drop_privileges(who, chown=[*services.owned_paths(), cfg.logging.file])
        except (OSError, systemd.IdentityError) as e:
            log.error("START failed reason=cannot drop privileges: %s", e)
            services.stop()
            return 1
    ready = f"data={services.data_url} control={cfg.control.socket}"
    if services.tickets_url:
        ready += f" tickets={services.tickets_url}"
    print(f"ready {ready}", file=sys.stderr, flush=True)
    log.info("READY %s", ready)
    systemd.notify("READY=1")
    signo = signals.wait()
    log.info("SIGNAL signo=%d stopping", signo)
    systemd.notify("STOPPING=1")
    services.stop()
    log.info("STOPPED")
    return 0


def _identity(cfg: configmod.Config) -> systemd.Identity | None:
    """Who to become after binding; None to stay who we are."""
    if not cfg.daemon.drop_privileges:
        return None
    if not cfg.daemon.user:
        raise systemd.IdentityError("[daemon] drop_privileges needs [daemon] user")
    return systemd.identity(cfg.daemon.user, cfg.daemon.group)


def _prepare_local(local_dir: Path, *, proxy: bool) -> None:
    from .pki import ensure_local_pki

    for sub in ("images", "hooks", "run", "conf.d"):
        (local_dir / sub).mkdir(parents=True, exist_ok=True)
        if proxy and sub != "images":
            (local_dir / "proxy" / sub).mkdir(parents=True, exist_ok=True)
    ensure_local_pki(local_dir / "pki")


def _setup_logging(cfg: configmod.Config) -> None:
    handler: logging.Handler
    if cfg.logging.file:
        handler = logging.handlers.RotatingFileHandler(
            cfg.logging.file, maxBytes=cfg.logging.max_bytes, backupCount=cfg.logging.backups
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s (%(threadName)s) [%(name)s] %(message)s")
    )
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(cfg.logging.level.upper())


if __name__ == "__main__":
    sys.exit(main())
