"""The senior's kiosk: a Python aiortc client of the Verzilvering server."""
