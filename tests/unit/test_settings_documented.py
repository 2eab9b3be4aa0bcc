"""Every setting is documented for operators: deploy/verzilvering.env.example names each one."""

import dataclasses
from pathlib import Path

from server.config import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "verzilvering.env.example"


def test_every_setting_is_in_the_env_example() -> None:
    text = ENV_EXAMPLE.read_text()
    missing = [f.name for f in dataclasses.fields(Settings) if f"VERZILVERING_{f.name.upper()}=" not in text]
    assert missing == [], f"add these to {ENV_EXAMPLE.name}: {missing}"


def test_the_env_example_names_no_unknown_setting() -> None:
    known = {f"VERZILVERING_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    named = {
        line.lstrip("#").split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.lstrip("#").startswith("VERZILVERING_") and "=" in line
    }
    assert named - known == set()
