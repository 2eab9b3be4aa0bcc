"""Imports point one way: the layers of docs/architecture.md ("Layers"), read from the code.

Every module under server/, signaling/, web/, kiosk_client/ and bench/ is parsed with `ast`
(nothing is imported) and each of its imports of another of these modules is checked:

- against the layer order: a module imports its own layer and the layers below it only;
- against the separations: the kiosk never reaches the SFU, signalling, the pages or the app;
  the web pages use only the tokens of signalling, signalling never the pages; only server/rtc
  loads the C extension; bench/ never imports tests/;
- for cycles between modules, which no layer order can see inside one layer;
- and that aiortc's, aioice's and pylibsrtp's internals are reached from server/rtc only.

Imports inside functions count like any other (an import does not stop being a dependency
by being late) and are allowed only where the list below gives a reason other than a cycle.
Imports under `if TYPE_CHECKING:` never run: they name the class of an object handed down
from a higher layer (an app key, the metrics the app gives the signalling service), so they
are exempt from the layer order and the cycle check, but not from the separations.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "signaling", "web", "kiosk_client", "bench")
# Compiled modules: no source to read, but importable by name.
EXTENSIONS = ("server._srtpsend",)

# Top to bottom. A module belongs to the layer of its longest matching prefix; whatever else
# is under server/ is state and plain domain logic (store, directory, pairing, invites,
# schedule, turn, config, datadir, appkeys, attendance, engagement, forwarded, tasks).
LAYERS = {
    "bench": ("bench",),
    "program top": ("server.app", "server.cli", "server.api", "server.metrics", "server.connections"),
    "signalling and pages": ("signaling", "web"),
    "room": ("server.room",),
    "sfu": ("server.sfu",),
    "kiosk": ("kiosk_client",),
    "rtc": ("server.rtc", "server._srtpsend"),
    "domain": ("server",),
}
# What each layer may import. The kiosk is a program of its own beside the server: it sits
# on rtc and the domain modules, never on the SFU or anything above it.
MAY_IMPORT = {
    "bench": set(LAYERS),
    "program top": {"program top", "signalling and pages", "room", "sfu", "rtc", "domain"},
    "signalling and pages": {"signalling and pages", "room", "sfu", "rtc", "domain"},
    "room": {"room", "sfu", "rtc", "domain"},
    "sfu": {"sfu", "rtc", "domain"},
    "kiosk": {"kiosk", "rtc", "domain"},
    "rtc": {"rtc", "domain"},
    "domain": {"domain"},
}

# Imports inside functions that stay, each for a reason other than a cycle.
LATE_IMPORTS = {
    ("server.store", "server.store.redis"): "a node loads only the store backend it uses",
    ("server.store", "server.store.embedded"): "a node loads only the store backend it uses",
    ("web.i18n", "web.catalogs"): "`python -m web.catalogs` must not find itself imported by the package first",
    ("kiosk_client.cli", "kiosk_client.screen"): "pygame (SDL) is loaded for `run` only, not `join` or `selftest`",
    ("kiosk_client.runner", "kiosk_client.screen"): "pygame (SDL) is loaded only when there is a display",
    ("kiosk_client.runner", "kiosk_client.video"): "pygame (SDL) is loaded only when there is a display",
}
# bench/ is left out of LATE_IMPORTS: its drivers load the code they measure where they
# measure it (capacity's driver and loadgen keep aiortc and the server out of their own
# processes on a 2-core machine; latency loads the server only with --in-process).

# bench/ importing tests/ (none left: the benches' helpers live in bench/).
KNOWN_BENCH_TO_TESTS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    where: str
    in_function: bool
    type_checking: bool


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "node_modules" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()
KNOWN = set(MODULES) | set(EXTENSIONS)
TREES = {module: ast.parse(path.read_text(), str(path)) for module, path in MODULES.items()}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The project modules an import statement loads by name ("tests" counts, to be refused)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        # `from package import name`: the submodule when there is one, else the package.
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in KNOWN else base for alias in node.names]
    for name in names:
        top = name.split(".")[0]
        if top == "tests":
            yield ".".join(name.split(".")[:2])
        elif top in PACKAGES:
            while name not in KNOWN and "." in name:
                name = name.rsplit(".", 1)[0]
            yield name


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path) -> None:
        self.module, self.path = module, path
        self.functions = 0
        self.type_checking = 0
        self.found: list[Import] = []

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self.type_checking += 1
        for child in node.body:
            self.visit(child)
        self.type_checking -= 1
        for child in node.orelse:
            self.visit(child)

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        where = f"{self.path.relative_to(ROOT)}:{node.lineno}"
        for target in _targets(self.module, self.path, node):
            if target != self.module:
                self.found.append(Import(self.module, target, where, self.functions > 0, self.type_checking > 0))

    visit_Import = _import  # type: ignore[assignment]
    visit_ImportFrom = _import  # type: ignore[assignment]


def _imports() -> list[Import]:
    found: list[Import] = []
    for module, path in sorted(MODULES.items()):
        collector = _Collector(module, path)
        collector.visit(TREES[module])
        found += collector.found
    return found


IMPORTS = _imports()


def layer_of(module: str) -> str:
    best, best_length = "", -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = layer, len(prefix)
    assert best, f"{module} is in no layer"
    return best


def _separation_problem(i: Import) -> str | None:
    source, target = i.source, i.target
    if target.startswith("tests"):
        if source.startswith("bench.") and (source, target) not in KNOWN_BENCH_TO_TESTS:
            return "bench/ never imports tests/"
        return None
    if source.startswith("kiosk_client") and layer_of(target) not in MAY_IMPORT["kiosk"]:
        return "the kiosk uses server/rtc and the domain modules only"
    if source.startswith("web") and target.startswith("signaling") and target != "signaling.tokens":
        return "the pages use signalling's tokens only"
    if source.startswith("signaling") and target.split(".")[0] == "web":
        return "signalling never imports the pages"
    if target in EXTENSIONS and not source.startswith("server.rtc."):
        return "only server/rtc loads the C extension"
    return None


def test_every_module_is_read_and_placed() -> None:
    assert len(MODULES) > 100
    for name in ("server.app", "server.appkeys", "server.sfu.router", "server.rtc.rtphooks", "web", "kiosk_client.cli"):
        assert name in MODULES, name
    assert layer_of("server.room") == "room"
    assert layer_of("server.appkeys") == "domain"
    assert layer_of("server.rtc.ice") == "rtc"
    assert layer_of("server.sfu.transport") == "sfu"
    assert layer_of("server.metrics") == "program top"
    for module in MODULES:
        layer_of(module)


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{i.where}: {i.source} ({layer_of(i.source)}) imports {i.target} ({layer_of(i.target)})"
        for i in IMPORTS
        if not i.type_checking and not i.target.startswith("tests")
        and layer_of(i.target) not in MAY_IMPORT[layer_of(i.source)]
    ]
    assert wrong == []


def test_separations_hold() -> None:
    wrong = [f"{i.where}: {i.source} imports {i.target}: {problem}" for i in IMPORTS if (problem := _separation_problem(i))]
    assert wrong == []


def test_known_bench_imports_of_tests_are_still_there() -> None:
    present = {(i.source, i.target) for i in IMPORTS if i.target.startswith("tests")}
    assert KNOWN_BENCH_TO_TESTS - present == set(), "gone: remove them from KNOWN_BENCH_TO_TESTS"


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for i in IMPORTS:
        if not i.type_checking and i.target in MODULES:
            graph.setdefault(i.source, set()).add(i.target)
    cycles = _cycles(graph)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_imports_inside_functions_have_a_reason() -> None:
    late = {
        (i.source, i.target): i.where
        for i in IMPORTS
        if i.in_function and not i.type_checking and not i.source.startswith("bench")
    }
    unexplained = sorted(f"{where}: {source} imports {target}" for (source, target), where in late.items()
                         if (source, target) not in LATE_IMPORTS)
    assert unexplained == []
    assert set(LATE_IMPORTS) - set(late) == set(), "gone: remove them from LATE_IMPORTS"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_web_always_means_aiohttps_web() -> None:
    """The pages package shares its name with aiohttp's `web`: it is never bound as a bare
    `web` (`import web as web_pages`, `from web.auth import ...`), so `web` is aiohttp's."""
    bare = [
        f"{MODULES[module].relative_to(ROOT)}:{node.lineno}"
        for module, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Import) and any(a.name == "web" and a.asname is None for a in node.names)
    ]
    assert bare == []


def _private_reaches(module: str) -> Iterator[tuple[str, int]]:
    """Private attributes read or written on something other than `self`/`cls`, and imports
    of private modules of aiortc, aioice and pylibsrtp."""
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield node.attr, node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                parts = name.split(".")
                if parts[0] in ("aiortc", "aioice", "pylibsrtp") and any(p.startswith("_") for p in parts):
                    yield name, node.lineno


def _own_private_names() -> set[str]:
    """Private names the project's own classes define (`self._x = ...`, `def _x`)."""
    names: set[str] = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("_"):
                names.add(node.name)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id == "self"):
                names.add(node.attr)
    return names


def test_only_server_rtc_touches_aiortc_internals() -> None:
    """What server/rtc reaches into (aiortc's, aioice's and pylibsrtp's private attributes and
    modules, asyncio's datagram transport) nobody else in the program does. bench/ is left
    out: its load generator and probes hook aiortc to measure it."""
    rtc = {name for module in MODULES if module.startswith("server.rtc.") for name, _ in _private_reaches(module)}
    theirs = {name for name in rtc - _own_private_names()} | {n for n in rtc if n.startswith("_RTC") or "." in n}
    assert {"_RTCRtpReceiver__remote_streams", "_send_rtp", "_rtp_router", "pylibsrtp._binding"} <= theirs
    wrong = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for module, path in sorted(MODULES.items())
        if not module.startswith(("server.rtc.", "bench"))
        for name, line in _private_reaches(module)
        if name in theirs or name.startswith("_RTC")
    ]
    assert wrong == []


def test_the_checker_sees_what_it_must() -> None:
    """The rules above catch what they are for, on made-up imports."""
    assert _separation_problem(Import("kiosk_client.call", "server.sfu.router", "x", False, False))
    assert _separation_problem(Import("kiosk_client.call", "server.sfu.router", "x", False, True))
    assert _separation_problem(Import("kiosk_client.cli", "server.rtc.ice", "x", False, False)) is None
    assert _separation_problem(Import("bench.loadgen", "tests.conftest", "x", True, False))
    assert _separation_problem(Import("server.sfu.producer", "server._srtpsend", "x", False, False))
    assert _separation_problem(Import("web.host", "signaling.service", "x", False, False))
    assert "sfu" not in MAY_IMPORT[layer_of("server.rtc.rtphooks")]
    assert "program top" not in MAY_IMPORT[layer_of("web.admin")]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    collector = _Collector("server.sfu.x", ROOT / "server" / "sfu" / "x.py")
    collector.visit(ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .router import Sfu\n"
        "def f():\n    from .. import appkeys\nfrom ..rtc import rtphooks\nimport web.i18n\n"
    ))
    assert [(i.target, i.in_function, i.type_checking) for i in collector.found] == [
        ("server.sfu.router", False, True), ("server.appkeys", True, False),
        ("server.rtc.rtphooks", False, False), ("web.i18n", False, False),
    ]
