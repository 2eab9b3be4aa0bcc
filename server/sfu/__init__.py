"""The SFU: a room's media on this node (Router, WebRtcTransport, Producer, Consumer and
the policies around them). Drives aiortc only through server/rtc."""
