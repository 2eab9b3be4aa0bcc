"""Benchmarks for Verzilvering; each module runs with `python -m bench.<name>`.

They run from a checkout (`python -m` puts the checkout first on the path), so they import
this checkout's `server/`, whose C module `_srtpsend` `pip install .` builds into the
installed copy only. Without it here, say exactly what to run instead of an ImportError.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _require_built_checkout() -> None:
    if importlib.util.find_spec("server._srtpsend") is None:
        sys.exit(
            f"bench: {_CHECKOUT / 'server'} has no compiled _srtpsend module (`pip install .` builds it into "
            "the installed copy, but the benches import this checkout); build it here first:\n"
            f"    cd {_CHECKOUT} && python3 setup.py build_ext --inplace\n"
            "(or install the checkout editable instead: pip install -e .)"
        )


_require_built_checkout()
