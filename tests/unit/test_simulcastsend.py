"""The kiosk's simulcast answer: sent only where the server's offer asks, with its extension ids."""

from __future__ import annotations

from kiosk_client.simulcastsend import (
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    answer_with_simulcast,
    offered_extension_ids,
)

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", "a=rtpmap:96 opus/48000/2",
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "a=mid:1",
    f"a=extmap:1 {MID_URI}", "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    f"a=extmap:4 {RID_URI}", f"a=extmap:5 {REPAIRED_RID_URI}",
    "a=rtpmap:97 VP8/90000", "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97",
    "a=rid:h recv", "a=rid:m recv", "a=rid:l recv", "a=simulcast:recv h;m;l", "",
])
ANSWER = "\r\n".join([
    "v=0", "o=- 2 2 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96", "a=mid:0", "a=ssrc:11 cname:x",
    "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "a=mid:1", f"a=extmap:1 {MID_URI}",
    "a=rtpmap:97 VP8/90000", "a=ssrc-group:FID 21 22", "a=ssrc:21 cname:x", "a=ssrc:22 cname:x", "",
])


def test_the_offer_asking_for_h_and_l_gives_its_extension_ids() -> None:
    ids = offered_extension_ids(OFFER, "1")
    assert ids is not None and (ids[MID_URI], ids[RID_URI], ids[REPAIRED_RID_URI]) == (1, 4, 5)
    assert offered_extension_ids(OFFER, "0") is None  # the audio m-line
    assert offered_extension_ids(OFFER.replace("a=simulcast:recv h;m;l", "a=simulcast:recv h;m"), "1") is None
    assert offered_extension_ids(OFFER.replace(f"a=extmap:4 {RID_URI}\r\n", ""), "1") is None
    assert offered_extension_ids(OFFER.replace("a=simulcast:recv h;m;l\r\n", ""), "1") is None


def test_the_answer_sends_h_and_l_by_rid_on_the_video_line_only() -> None:
    ids = offered_extension_ids(OFFER, "1")
    assert ids is not None
    answer = answer_with_simulcast(ANSWER, "1", ids)
    audio, video = answer.split("m=video")
    assert "a=ssrc:11 cname:x" in audio and "a=rid" not in audio
    assert f"a=extmap:4 {RID_URI}" in video and f"a=extmap:5 {REPAIRED_RID_URI}" in video
    assert "a=rid:h send" in video and "a=rid:l send" in video and "a=simulcast:send h;l" in video
    assert "a=ssrc" not in video  # layers are named by rid, as browsers do
