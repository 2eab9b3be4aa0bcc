"""The senior's kiosk: a Python aiortc client of the Verzilvering server."""

import os as _os

# Sent in the device hello so coordinators see which software a kiosk runs.
__version__ = "0.1.0"

# pygame prints a greeting on import; a kiosk's journal has no use for it.
_os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
