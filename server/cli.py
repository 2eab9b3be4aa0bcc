"""The `verzilvering` command: serve, token, admin."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from typing import Any

from aiohttp import web

from signaling.tokens import ROLES

from .app import create_app, make_issuer
from .config import Settings

DEMO_ROOM = "demo-koffieochtend"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verzilvering", description="Verzilvering server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run signalling, media and web in one process")
    serve.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8080)")
    serve.add_argument("--data-dir", default=None, help="where durable data lives")
    serve.add_argument("--demo", action="store_true", help="create a demo activity and print links")
    serve.add_argument("--redis-url", default=None, help="share state with other nodes through Redis")
    serve.add_argument("--node-id", default=None, help="this node's name in the cluster")
    serve.add_argument("--log-level", default="INFO")

    token = sub.add_parser("token", help="print a signed join token")
    token.add_argument("--role", required=True, choices=ROLES)
    token.add_argument("--room", required=True)
    token.add_argument("--name", required=True)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--data-dir", default=None)

    admin = sub.add_parser("admin", help="manage staff accounts (coordinators, volunteers)")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create_user = admin_sub.add_parser("create-user", help="create a coordinator or volunteer account")
    create_user.add_argument("--username", required=True, help="3 to 64 characters, used to log in")
    create_user.add_argument("--name", required=True, help="the name shown on the pages")
    create_user.add_argument("--role", required=True, choices=("coordinator", "volunteer"))
    create_user.add_argument("--language", default="nl", choices=("nl", "en"))
    create_user.add_argument(
        "--password-stdin", action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    create_user.add_argument("--data-dir", default=None)

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "admin":
        return _admin(args)
    return _token(args)


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return Settings.from_env(data_dir=args.data_dir, **extra)


def _token(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        print(make_issuer(settings).issue(role=args.role, room=args.room, name=args.name, ttl_s=args.ttl))
    except ValueError as exc:
        print(f"verzilvering token: {exc}", file=sys.stderr)
        return 2
    return 0


def _admin(args: argparse.Namespace) -> int:
    from web.auth import check_new_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            print("verzilvering admin: the passwords differ; nothing was created", file=sys.stderr)
            return 2
    problem = check_new_password(password)
    if problem:
        print(f"verzilvering admin: {problem}", file=sys.stderr)
        return 2
    try:
        account = asyncio.run(_create_user(_settings(args), args, password))
    except ValueError as exc:
        print(f"verzilvering admin: {exc}", file=sys.stderr)
        return 2
    print(f"created {account.role} {account.username!r} ({account.name}, id {account.id})")
    return 0


async def _create_user(settings: Settings, args: argparse.Namespace, password: str) -> Any:
    from web.auth import hash_password

    from .directory import Account, Directory, DirectoryError, new_id
    from .store import open_store

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
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiortc/aioice are chatty at INFO about every ICE check.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = _settings(args, host=args.host, port=args.port, redis_url=args.redis_url, node_id=args.node_id)
    try:
        asyncio.run(_run(settings, demo=args.demo))
    except KeyboardInterrupt:
        pass
    return 0


async def _run(settings: Settings, *, demo: bool) -> None:
    from .app import GUARD_KEY

    app = create_app(settings)
    # No access log: URLs carry join tokens.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, keepalive_timeout=settings.http_keepalive_timeout_s
    )
    await runner.setup()
    assert runner.server is not None
    app[GUARD_KEY].install(runner.server, asyncio.get_running_loop())
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    _tune_gc(settings)
    logging.getLogger(__name__).info("listening on %s", settings.base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if demo:
            await _create_demo(app, settings)
        await stop.wait()
        await _drain(app, settings)
    finally:
        await runner.cleanup()


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
    from .app import SIGNALING_KEY

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
    from .app import ISSUER_KEY, STORE_KEY

    await app[STORE_KEY].put_record(
        "activities",
        DEMO_ROOM,
        {
            "id": DEMO_ROOM,
            "title": "Koffieochtend (demo)",
            "description": "Een demo-activiteit om Verzilvering uit te proberen.",
        },
    )
    issuer = app[ISSUER_KEY]
    ttl = 12 * 3600
    links = {
        "host (gastvrouw/gastheer)": issuer.issue(role="host", room=DEMO_ROOM, name="Gastvrouw Ans", ttl_s=ttl),
        "family (familie)": issuer.issue(role="family", room=DEMO_ROOM, name="Kleindochter Sanne", ttl_s=ttl),
    }
    kiosk_token = issuer.issue(role="senior", room=DEMO_ROOM, name="Mevrouw De Vries", ttl_s=ttl)
    base = settings.base_url
    lines = [
        "",
        f"Verzilvering demo activity '{DEMO_ROOM}' is ready at {base}",
    ]
    for who, tok in links.items():
        lines.append(f"  {who}: {base}/call?token={tok}")
    lines.append(f"  kiosk: verzilvering-kiosk join --server {base} --token {kiosk_token}")
    lines.append("")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
