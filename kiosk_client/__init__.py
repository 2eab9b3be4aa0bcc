"""The senior's kiosk: a Python aiortc client of the Verzilvering server."""

import os as _os

# pygame prints a greeting on import; a kiosk's journal has no use for it.
_os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
