"""Every setting acts: each field of server/config.py's Settings is read, as an attribute of
the settings, somewhere in the program (server/, signaling/, web/, kiosk_client/) outside
server/config.py. A field nobody reads is a setting that lies (its variable does nothing)."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

from server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ("server", "signaling", "web", "kiosk_client")
CONFIG = ROOT / "server" / "config.py"

# Fields known to be unread, each with what will read it. The test fails when one of them
# is read after all (remove it here) as much as when any other field is not.
PENDING: dict[str, str] = {}


def _mentions_settings(node: ast.expr) -> bool:
    return "settings" in ast.unparse(node).lower()


def _settings_reads(tree: ast.Module) -> set[str]:
    """Attribute names read from a settings object: `settings.x`, `self.settings.x`,
    `app[SETTINGS_KEY].x`, `Settings.x`, or a local name bound to one (`s = self.settings`)."""
    aliases = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and _mentions_settings(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Load)
        and (_mentions_settings(node.value) or (isinstance(node.value, ast.Name) and node.value.id in aliases))
    }


def _read_anywhere() -> set[str]:
    read: set[str] = set()
    for package in PROGRAM:
        for folder, subfolders, files in os.walk(ROOT / package):
            subfolders[:] = [d for d in subfolders if d != "node_modules"]  # web/axe's tooling
            for name in files:
                path = Path(folder) / name
                if name.endswith(".py") and path != CONFIG:
                    read |= _settings_reads(ast.parse(path.read_text(), str(path)))
    return read


def test_every_setting_is_read_outside_config() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    unread = fields - _read_anywhere()
    assert unread - set(PENDING) == set(), f"settings that nothing reads: {sorted(unread - set(PENDING))}"
    assert set(PENDING) <= fields
    assert unread == set(PENDING), f"now read, remove from PENDING: {sorted(set(PENDING) - unread)}"


def test_the_scan_sees_the_usual_ways_of_reading() -> None:
    source = """
def f(self, app, settings):
    a = settings.alpha
    b = self.settings.beta
    c = app[SETTINGS_KEY].gamma
    s = self._settings
    d = s.delta
    e = Settings.epsilon
    other.zeta
"""
    assert _settings_reads(ast.parse(source)) == {"alpha", "beta", "gamma", "delta", "epsilon"}
