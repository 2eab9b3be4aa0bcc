"""Simulcast negotiation for a publisher's video (RFC 8851 rids, RFC 8853 simulcast).

aiortc neither offers nor parses `a=rid` / `a=simulcast`; the SFU adds them to the offer
text it sends and reads the answer's text itself. The server is always the offerer: for a
video m-line a publisher sends on, it offers three receive rids — `h` full, `m` ½ and
`l` ¼ resolution — and the header extensions that name a packet's layer. The publisher
answers with the rids it sends (RFC 8853 lets it drop some) or without simulcast (one
layer, exactly as before). Each layer comes on its own SSRC, named by the rtp-stream-id
extension on its first packets (repaired-rtp-stream-id on its RTX SSRC);
`server/rtc/rtphooks.py`'s `ReceiverTap` maps each SSRC to its layer on first sight.
"""

from __future__ import annotations

from dataclasses import dataclass

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# aiortc numbers its own extensions 1-3 (mid, audio level, abs-send-time) on every m-line;
# under BUNDLE one id means one extension on all of them, so these take the next free ids.
RID_EXTENSION_ID = 4
REPAIRED_RID_EXTENSION_ID = 5
# Highest first, as RFC 8853 lists them; the spatial index counts from the smallest.
RIDS = ("h", "m", "l")
SPATIAL_INDEX = {"l": 0, "m": 1, "h": 2}
SCALE_DOWN = {"h": 1, "m": 2, "l": 4}


@dataclass(frozen=True)
class SimulcastAnswer:
    """What a publisher agreed to send on one video m-line."""

    rids: tuple[str, ...]
    rid_extension_id: int | None
    repaired_rid_extension_id: int | None

    @property
    def spatial_layers(self) -> tuple[int, ...]:
        return tuple(sorted(SPATIAL_INDEX[r] for r in self.rids))


def _sections(sdp: str) -> list[list[str]]:
    """The session part, then one list of lines per m-section."""
    sections: list[list[str]] = [[]]
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _mid_of(section: list[str]) -> str | None:
    for line in section:
        if line.startswith("a=mid:"):
            return line[len("a=mid:"):].strip()
    return None


def offer_simulcast(sdp: str, mid: str) -> str:
    """Adds receive simulcast (rids h, m, l) and the layer-naming extensions to one video m-line."""
    sections = _sections(sdp)
    for section in sections[1:]:
        if not section[0].startswith("m=video") or _mid_of(section) != mid:
            continue
        if any(line.startswith("a=simulcast:") for line in section):
            return sdp
        extmaps = [i for i, line in enumerate(section) if line.startswith("a=extmap:")]
        at = (extmaps[-1] + 1) if extmaps else next(i for i, l in enumerate(section) if l.startswith("a=mid:")) + 1
        present = {line.split(" ", 1)[1] for line in section if line.startswith("a=extmap:") and " " in line}
        added = []
        if MID_URI not in present:
            added.append(f"a=extmap:1 {MID_URI}")
        added += [f"a=extmap:{RID_EXTENSION_ID} {RID_URI}", f"a=extmap:{REPAIRED_RID_EXTENSION_ID} {REPAIRED_RID_URI}"]
        section[at:at] = added
        # After the last attribute line, before the trailing empty string of the last section.
        end = len(section)
        while end > 1 and section[end - 1] == "":
            end -= 1
        section[end:end] = [f"a=rid:{rid} recv" for rid in RIDS] + [f"a=simulcast:recv {';'.join(RIDS)}"]
        break
    return "\r\n".join(line for section in sections for line in section)


def answered_simulcast(sdp: str, mid: str) -> SimulcastAnswer | None:
    """The rids a publisher's answer sends on m-line `mid`, or None for a single layer.

    Rids the server did not offer, rids marked paused (`~h`) and alternatives after the
    first (`h,m`) are left out; an answer naming fewer than one known rid is single-layer.
    """
    for section in _sections(sdp)[1:]:
        if not section[0].startswith("m=video") or _mid_of(section) != mid:
            continue
        extensions: dict[str, int] = {}
        sent_rids: set[str] = set()
        order: list[str] = []
        for line in section:
            if line.startswith("a=extmap:"):
                head, _, uri = line[len("a=extmap:"):].partition(" ")
                try:
                    extensions[uri.strip().split(" ")[0]] = int(head.split("/")[0])
                except ValueError:
                    continue
            elif line.startswith("a=rid:"):
                parts = line[len("a=rid:"):].split()
                if len(parts) >= 2 and parts[1] == "send":
                    sent_rids.add(parts[0])
            elif line.startswith("a=simulcast:"):
                words = line[len("a=simulcast:"):].split()
                if len(words) >= 2 and words[0] == "send":
                    for stream in words[1].split(";"):
                        first = stream.split(",")[0]
                        if first and not first.startswith("~"):
                            order.append(first)
        rids = tuple(r for r in order if r in sent_rids and r in SPATIAL_INDEX)
        if not rids or RID_URI not in extensions:
            return None
        return SimulcastAnswer(rids, extensions.get(RID_URI), extensions.get(REPAIRED_RID_URI))
    return None
