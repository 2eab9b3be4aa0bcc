"""The README's first commands work for a newcomer on Debian, whose system Python refuses
`pip install` (externally managed): a virtual environment first (issue 12, item 14)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _first_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no sh block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_the_install_commands_make_and_use_a_venv_before_pip() -> None:
    commands = _first_commands()
    venv = commands.index("python3 -m venv .venv")
    activate = commands.index(". .venv/bin/activate")
    pip = commands.index("pip install .")
    serve = commands.index("verzilvering serve --demo")
    assert venv < activate < pip < serve, commands
    assert any("python3-venv" in c and "python3-dev" in c and "gcc" in c for c in commands[:venv]), commands
    # No pip into the system's Python, and no way around the protection.
    assert not any("--break-system-packages" in c or c.startswith("sudo pip") for c in commands)


def test_the_demo_steps_name_the_three_links_in_order() -> None:
    text = README.read_text()
    steps = [text.index(s) for s in ("1. open the host link", "2. run the kiosk command", "3. open the family link")]
    assert steps == sorted(steps)
