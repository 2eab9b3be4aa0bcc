"""The only code that reaches into aiortc's, aioice's and pylibsrtp's internals or loads the
C extension (server/_srtpsend.c); used by the SFU (server/sfu) and the kiosk (kiosk_client).

Importing this package loads nothing: `server.rtc.ice` stays cheap for the kiosk's command.
"""
