"""The `verzilvering` command: serve, token, admin."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import shlex
import signal
import socket
import sys
from typing import Any

from aiohttp import web

from signaling.tokens import ROLES, SECRET_FILE
from web.auth import hash_password
from web.i18n import gettext_for
from web.password_policy import check_new_password

from .app import create_app, make_issuer
from .appkeys import GUARD_KEY, ISSUER_KEY, SIGNALING_KEY, STORE_KEY
from .config import Settings
from .directory import Account, Activity, Directory, DirectoryError, new_id
from .store import open_store

DEMO_ROOM = "demo-koffieochtend"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DATA_DIR_HELP = (
    "where durable data lives: the token signing secret and, without --redis-url, the directory "
    "(default ./verzilvering-data in the current folder, or VERZILVERING_DATA_DIR)"
)


class CliError(Exception):
    """A problem the person at the terminal can fix: printed as one plain line, exit 2."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verzilvering", description="Verzilvering server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run signalling, media and web in one process")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: all its addresses)")
    serve.add_argument("--port", type=int, default=None, help="port, 1 to 65535 (default 8080)")
    serve.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    serve.add_argument("--demo", action="store_true", help="create a demo activity and print links for a host, family and a kiosk")
    serve.add_argument("--redis-url", default=None, help="share state with other nodes through Redis (default: none, one node)")
    serve.add_argument("--node-id", default=None, help="this node's name in the cluster (default: a random one)")
    serve.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                       help="how much the log says (default INFO)")

    token = sub.add_parser("token", help="print a signed join token")
    token.add_argument("--role", required=True, choices=ROLES, help="senior (a kiosk), host, family or admin")
    token.add_argument("--room", required=True, help="the room to join: an activity's id (e.g. demo-koffieochtend) or any name")
    token.add_argument("--name", required=True, help="the name the others see, e.g. 'Gastvrouw Ans'")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.add_argument("--data-dir", default=None, help=DATA_DIR_HELP + "; must be the server's")

    admin = sub.add_parser("admin", help="manage staff accounts (coordinators, volunteers)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create_user = admin_sub.add_parser("create-user", help="create a coordinator or volunteer account")
    create_user.add_argument("--username", required=True, help="3 to 64 characters, used to log in")
    create_user.add_argument("--name", required=True, help="the name shown on the pages")
    create_user.add_argument("--role", required=True, choices=("coordinator", "volunteer"))
    create_user.add_argument("--language", default="nl", choices=("nl", "en"), help="language of the pages (default nl)")
    create_user.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    create_user.add_argument("--data-dir", default=None, help=DATA_DIR_HELP + "; must be the server's")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "admin":
            return _admin(args)
        return _token(args)
    except CliError as exc:
        print(f"verzilvering {args.command}: {exc}", file=sys.stderr)
        return 2


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    try:
        settings = Settings.from_env(data_dir=args.data_dir, **extra)
    except ValueError as exc:
        raise CliError(f"{exc}; correct or unset it") from None
    if settings.token_secret and len(settings.token_secret) < 32:
        raise CliError(
            f"VERZILVERING_TOKEN_SECRET has {len(settings.token_secret)} characters but needs at least 32; "
            "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))' "
            "(or unset it to use the secret kept in the data directory)"
        )
    return settings


def _token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    data_dir = settings.data_dir.resolve()
    created = not settings.token_secret and not (data_dir / SECRET_FILE).exists()
    try:
        token = make_issuer(settings).issue(role=args.role, room=args.room, name=args.name, ttl_s=args.ttl)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if settings.token_secret:
        print("verzilvering token: signed with VERZILVERING_TOKEN_SECRET", file=sys.stderr)
    elif created:
        print(
            f"verzilvering token: warning: {data_dir} had no signing secret, so a new one was made; "
            "a server with another data directory refuses this token (use the server's --data-dir)",
            file=sys.stderr,
        )
    else:
        print(f"verzilvering token: signed with the secret in {data_dir}", file=sys.stderr)
    print(token)
    return 0


def _admin(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise CliError(
            "there is no terminal to ask the password on; give it on standard input with --password-stdin "
            "(e.g. printf '%s\\n' \"$PASSWORD\" | verzilvering admin create-user ... --password-stdin); nothing was created"
        )
    else:
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CliError("the passwords differ; nothing was created")
    problem = check_new_password(password, username=args.username, name=args.name)
    if problem:
        # The operator may read either language: both, English first.
        raise CliError(f"{problem.rstrip('.')} / {gettext_for('nl')(problem).rstrip('.')}; nothing was created")
    settings = _settings(args)
    try:
        account = asyncio.run(_create_user(settings, args, password))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(
        f"created {account.role} {account.username!r} ({account.name}, id {account.id}) "
        f"in {settings.data_dir.resolve()}; log in at /login of the server using that data directory"
    )
    return 0


async def _create_user(settings: Settings, args: argparse.Namespace, password: str) -> Any:
    store = await open_store(settings, node_id="cli")
    try:
        directory = Directory(store)
        account = Account(
            id=new_id("staff"), name=args.name, username=args.username, role=args.role, language=args.language
        )
        try:
            account.validate()
        except DirectoryError as exc:
            raise ValueError(exc.message) from None
        if await directory.account_by_username(account.username) is not None:
            raise ValueError(f"the username {account.username!r} is taken; nothing was created")
        account.password_hash = await hash_password(password)
        await directory.put(account, actor="cli")
        return account
    finally:
        await store.close()


def _serve(args: argparse.Namespace) -> int:
    if args.port is not None and not 1 <= args.port <= 65535:
        raise CliError(f"--port {args.port} is not a port; choose one from 1 to 65535 (default 8080)")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiortc/aioice are chatty at INFO about every ICE check.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = _settings(args, host=args.host, port=args.port, redis_url=args.redis_url, node_id=args.node_id)
    try:
        asyncio.run(_run(settings, demo=args.demo))
    except KeyboardInterrupt:
        pass
    return 0


def _listen_error(exc: OSError, settings: Settings) -> CliError:
    """What went wrong binding the listening socket, and what to do about it."""
    where = f"{settings.host} port {settings.port}"
    if exc.errno == errno.EADDRINUSE:
        return CliError(
            f"{where} is already in use (another verzilvering serve, or another program); "
            "stop that one or choose another port with --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return CliError(
            f"--host {settings.host} is not an address of this machine; use 127.0.0.1 (this machine only), "
            "0.0.0.0 (all its addresses) or one that `ip address` lists"
        )
    if exc.errno == errno.EACCES:
        return CliError(f"{where} needs more rights than this user has; choose a port above 1023 with --port")
    return CliError(f"cannot listen on {where}: {exc.strerror or exc}")


async def _run(settings: Settings, *, demo: bool) -> None:
    app = create_app(settings)
    # No access log: URLs carry join tokens.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=settings.http_keepalive_timeout_s
    )
    await runner.setup()
    assert runner.server is not None
    app[GUARD_KEY].install(runner.server, asyncio.get_running_loop())
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise _listen_error(exc, settings) from None
        _tune_gc(settings)
        logging.getLogger(__name__).info("listening on %s", settings.base_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(_welcome(settings), flush=True)
        if demo:
            await _create_demo(app, settings)
        await stop.wait()
        await _drain(app, settings)
    finally:
        await runner.cleanup()


def _welcome(settings: Settings) -> str:
    """What a person starting the server needs to know: where, where the data is, the
    coordinators' pages and their first account, and how to stop."""
    data_dir = settings.data_dir.resolve()
    where_data = f"Data: {data_dir}"
    if settings.redis_url:
        where_data += " (the token secret; everything else is shared in Redis)"
    return "\n".join([
        f"Verzilvering is running at {settings.base_url}",
        where_data,
        f"Coordinators: {settings.base_url}/admin (hosts: {settings.base_url}/host). Make the first coordinator with:",
        f"  verzilvering admin create-user --data-dir {shlex.quote(str(data_dir))} "
        "--username USERNAME --name 'FULL NAME' --role coordinator",
        "Stop with Ctrl-C (or SIGTERM: the node first sends its calls elsewhere).",
    ])


def _tune_gc(settings: Settings) -> None:
    """A node's heap is mostly long-lived objects (modules, settings, directory). Moving
    what exists after start-up to the permanent generation keeps the collector from
    walking it again; a larger first-generation threshold makes collections (each one
    a pause for every join in flight) rarer under the allocations of a join burst."""
    if settings.gc_freeze_after_start:
        gc.collect()
        gc.freeze()
    if settings.gc_gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)


async def _drain(app: web.Application, settings: Settings) -> None:
    """Sends every client to another node, then lets the process exit."""
    cluster = app[SIGNALING_KEY].cluster
    log = logging.getLogger(__name__)
    log.info("draining: sending clients elsewhere")
    await cluster.drain()
    deadline = loop_time() + settings.drain_timeout_s
    while not cluster.idle and loop_time() < deadline:
        await asyncio.sleep(0.1)
    log.info("drained; stopping")


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _create_demo(app: web.Application, settings: Settings) -> None:
    import dataclasses

    # Guests welcome, so the family link works: family waits in the waiting room until
    # the host (whose link opens the host console) lets them in.
    activity = Activity(
        id=DEMO_ROOM,
        title="Koffieochtend (demo)",
        description="Een demo-activiteit om Verzilvering uit te proberen.",
        guests_allowed=True,
    )
    activity.validate()
    await app[STORE_KEY].put_record("activities", DEMO_ROOM, dataclasses.asdict(activity))
    issuer = app[ISSUER_KEY]
    ttl = 12 * 3600
    host = issuer.issue(role="host", room=DEMO_ROOM, name="Gastvrouw Ans", ttl_s=ttl)
    family = issuer.issue(role="family", room=DEMO_ROOM, name="Kleindochter Sanne", ttl_s=ttl)
    kiosk_token = issuer.issue(role="senior", room=DEMO_ROOM, name="Mevrouw De Vries", ttl_s=ttl)
    base = settings.base_url
    lines = [
        "",
        f"Verzilvering demo activity '{DEMO_ROOM}' is ready at {base}",
        "  1. host (gastvrouw/gastheer), in a browser; lets the family in from its waiting room:",
        f"     {base}/call?token={host}",
        "  2. kiosk (the senior), in another terminal:",
        f"     verzilvering-kiosk join --server {base} --token {kiosk_token}",
        "  3. family (familie), in another browser window; waits until the host lets them in:",
        f"     {base}/call?token={family}",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
