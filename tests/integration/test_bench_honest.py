"""bench.latency compares like with like, and the benches say what to run when the checkout
is not built (issue 12, item 13)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from bench.latency import ProbedCallClient, ReceivePathMix, check_receive_path, subscriber_pc
from bench.stamp import ReceiveLog
from kiosk_client.rtpreceiver import install_tuned_receiver

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("receiver", ["stock", "tuned"])
async def test_every_path_builds_its_subscribers_on_the_run_s_receive_path(receiver: str) -> None:
    """Before, "ours" (a CallClient) always got the tuned path whatever the run said."""
    ours = ProbedCallClient(ReceiveLog("ours-0"), receiver, "http://127.0.0.1:9", "token")
    pcs = [ours._new_peer_connection(), subscriber_pc(receiver)]
    pcs[0].addTransceiver("video", direction="recvonly")
    pcs[1].addTransceiver("video", direction="recvonly")
    try:
        for path in ("ours", "direct"):
            check_receive_path(path, pcs, receiver)
        other = "tuned" if receiver == "stock" else "stock"
        with pytest.raises(ReceivePathMix, match=f"did not use the {other} receive path"):
            check_receive_path("ours", pcs, other)
    finally:
        for pc in pcs:
            await pc.close()
        await ours.signaling.close()


async def test_a_mix_of_receive_paths_is_detected() -> None:
    stock, tuned = RTCPeerConnection(), RTCPeerConnection()
    for pc in (stock, tuned):
        pc.addTransceiver("video", direction="recvonly")
    install_tuned_receiver(tuned)
    try:
        with pytest.raises(ReceivePathMix, match="1 ours subscriber"):
            check_receive_path("ours", [stock, tuned], "stock")
    finally:
        await stock.close()
        await tuned.close()


def test_a_checkout_without_its_c_module_says_what_to_build(tmp_path: Path) -> None:
    """As after `pip install .`: the installed copy has _srtpsend, the checkout does not."""
    checkout = tmp_path / "checkout"
    for package in ("server", "bench"):
        shutil.copytree(REPO / package, checkout / package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # -S: no site-packages, so nothing but the checkout is importable (as for a plain install
    # whose site-packages copy the checkout shadows).
    out = subprocess.run([sys.executable, "-S", "-m", "bench.latency", "--quick"], cwd=checkout,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "ImportError" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "has no compiled _srtpsend module" in out.stderr
    assert f"cd {checkout} && python3 setup.py build_ext --inplace" in out.stderr
