"""The kiosk's Opus: FEC sent when the offer asks, and a lost packet rebuilt from the next one's FEC."""

from __future__ import annotations

import fractions

import numpy as np
from aiortc.codecs.opus import OpusEncoder
from av import AudioFrame

from kiosk_client.jitterbuffer import AdaptiveAudioBuffer, AudioPacket, Concealment
from kiosk_client.opus import (
    SPEECH_BITRATE_BPS, FecOpusEncoder, OfferedRateOpusEncoder, OpusDecoder, load, opus_offer,
)

LOST = (30, 40, 50)


def _voice(n: int) -> np.ndarray:
    """20 ms of a voiced, syllable-paced sound (harmonics of 180 Hz, 4 Hz envelope)."""
    t = (np.arange(960) + n * 960) / 48000
    harmonics = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((180, 360, 540, 720)))
    return (harmonics * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) * 6000).astype(np.int16)


def _packets(encoder: OpusEncoder, count: int = 60) -> list[bytes]:
    packets: list[bytes] = []
    for n in range(count):
        mono = _voice(n)
        frame = AudioFrame.from_ndarray(np.stack([mono, mono]).T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, n * 960, fractions.Fraction(1, 48000)
        packets += encoder.encode(frame)[0]
    return packets


def _relative_errors(packets: list[bytes], use_fec: bool) -> list[float]:
    reference = OpusDecoder()
    expected = [reference.decode(p, i * 960)[0].to_ndarray()[0, 0::2].astype(float) for i, p in enumerate(packets)]
    decoder = OpusDecoder()
    errors = []
    for i, packet in enumerate(packets):
        if i in LOST:
            (frame,) = decoder.conceal(i * 960, 960, packets[i + 1] if use_fec else None)
            assert (frame.samples, frame.format.name, frame.layout.name, frame.pts) == (960, "s16", "stereo", i * 960)
            got = frame.to_ndarray()[0, 0::2].astype(float)
            errors.append(float(np.sqrt(np.mean((got - expected[i]) ** 2)) / np.sqrt(np.mean(expected[i] ** 2))))
        else:
            decoder.decode(packet, i * 960)
    return errors


def test_a_lost_packet_comes_back_from_the_next_packets_fec() -> None:
    packets = _packets(FecOpusEncoder())
    with_fec = _relative_errors(packets, use_fec=True)
    concealed = _relative_errors(packets, use_fec=False)
    assert max(with_fec) < 0.1, with_fec
    assert min(concealed) > 2 * max(with_fec), (concealed, with_fec)


def test_without_fec_in_the_stream_the_decoder_still_conceals_instead_of_silence() -> None:
    packets = _packets(OpusEncoder())
    full = OpusDecoder()
    reference = [np.abs(full.decode(p, i * 960)[0].to_ndarray()).mean() for i, p in enumerate(packets[:11])][10]
    decoder = OpusDecoder()
    for i, packet in enumerate(packets[:10]):
        decoder.decode(packet, i * 960)
    (frame,) = decoder.conceal(10 * 960, 960, packets[11])  # no FEC in it: libopus conceals
    assert frame.samples == 960 and np.abs(frame.to_ndarray()).mean() > reference / 4
    (frame,) = decoder.conceal(11 * 960, 960)
    assert frame.samples == 960 and (decoder.fec_recovered, decoder.concealed) == (1, 1)


def test_the_fec_encoder_codes_in_a_mode_that_carries_fec() -> None:
    # TOC configurations 0-15 have a SILK layer (RFC 6716 §3.1), where the FEC copy lives;
    # aiortc's encoder (96 kbit/s, no FEC) codes CELT only (16-31), which has none.
    for bitrate in (SPEECH_BITRATE_BPS, 128_000):
        assert all(p[0] >> 3 < 16 for p in _packets(FecOpusEncoder(bitrate), 20)[5:]), bitrate
    assert all(p[0] >> 3 >= 16 for p in _packets(OpusEncoder(), 20)[5:])


def _kbps(packets: list[bytes]) -> float:
    return sum(len(p) for p in packets) * 8 / (len(packets) * 0.02) / 1000


def test_a_voice_is_sent_at_a_third_of_aiortcs_bitrate() -> None:
    ours, aiortcs = _kbps(_packets(OfferedRateOpusEncoder())[10:]), _kbps(_packets(OpusEncoder())[10:])
    assert ours <= SPEECH_BITRATE_BPS / 1000 * 1.1, ours
    assert aiortcs >= 2 * ours, (aiortcs, ours)


def test_the_offer_sets_the_bitrate_within_rfc_7587s_range() -> None:
    offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 opus/48000/2\r\n"
    assert opus_offer(offer).bitrate_bps == SPEECH_BITRATE_BPS
    assert opus_offer(offer + "a=fmtp:96 useinbandfec=1\r\n").bitrate_bps == SPEECH_BITRATE_BPS
    assert opus_offer(offer + "a=fmtp:96 useinbandfec=1;stereo=1;maxaveragebitrate=128000\r\n").bitrate_bps == 128_000
    assert opus_offer(offer + "a=fmtp:96 maxaveragebitrate=1000\r\n").bitrate_bps == 6_000
    assert opus_offer(offer + "a=fmtp:96 maxaveragebitrate=900000\r\n").bitrate_bps == 510_000


def test_a_new_bitrate_mid_stream_continues_the_timestamps_and_decodes() -> None:
    encoder = OfferedRateOpusEncoder()
    timestamps: list[int] = []
    packets: list[bytes] = []
    for n in range(100):
        if n == 50:
            encoder.bitrate_bps = 128_000
        mono = _voice(n)
        frame = AudioFrame.from_ndarray(np.stack([mono, mono]).T.reshape(1, -1).copy(), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, n * 960, fractions.Fraction(1, 48000)
        encoded, timestamp = encoder.encode(frame)
        if encoded:
            assert timestamp is not None
            timestamps.append(timestamp)
            packets += encoded
    assert [b - a for a, b in zip(timestamps, timestamps[1:])] == [960] * (len(timestamps) - 1)
    assert _kbps(packets[60:]) >= 2 * _kbps(packets[10:50])
    decoder = OpusDecoder()
    assert all(decoder.decode(p, i * 960)[0].samples == 960 for i, p in enumerate(packets))


def test_the_jitter_buffer_hands_the_next_packet_along_with_a_concealment() -> None:
    buffer = AdaptiveAudioBuffer()
    buffer.push(1, 0, b"one", 0.0)
    buffer.push(3, 1920, b"three", 0.041)
    assert buffer.pop(0.021) == [AudioPacket(0, b"one")]
    assert buffer.pop(0.041) == [Concealment(960, 960, b"three")]
    assert buffer.pop(0.061) == [AudioPacket(1920, b"three")]


def test_fec_is_used_only_where_the_offer_asks_for_it() -> None:
    offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 opus/48000/2\r\n"
    assert not opus_offer(offer).fec
    assert opus_offer(offer + "a=fmtp:96 useinbandfec=1\r\n").fec
    assert not opus_offer(offer + "a=fmtp:96 useinbandfec=0\r\n").fec


def test_the_bundled_libopus_is_one_with_fec_decoding() -> None:
    # opus_decode(decode_fec=1) exists since libopus 1.0; PyAV 18.1.0 bundles 1.6.1.
    assert load().opus_get_version_string().decode().startswith("libopus 1.")
