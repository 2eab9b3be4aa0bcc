"""WebSocket signalling for Verzilvering: tokens, protocol v1, sessions and rooms."""
