"""An impaired network for one client: its own network namespace, a veth link to this one,
a `tc tbf` rate cap and nftables random loss. For benches and tests; needs root, `ip`, `tc`, `nft`.

    with ImpairedLink.create("adapt") as link:   # 10.x.y.1 here, 10.x.y.2 in the namespace
        link.cap_downlink_kbit(250)              # tbf on the veth towards the namespace
        link.drop_udp_percent(5)                 # nftables `numgen random` in the namespace
        link.command([sys.executable, "-m", "bench.netclient", ...])  # runs inside it

This kernel has no `sch_netem`, so there is no kernel delay or reordering here: jitter is
made in user space by `bench.jitterlink`. Everything is named after the caller and the
process id and removed on exit, so parallel runs never share or leak a namespace.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from types import TracebackType


class NetnsUnavailable(RuntimeError):
    """This machine cannot make the impaired link (not root, or a tool missing)."""


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def available() -> str | None:
    """None if an impaired link can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc", "nft") if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (Debian: iproute2, nftables)" if missing else None


def _free_subnet() -> ipaddress.IPv4Network:
    used = _run("ip", "-o", "-4", "addr", "show")
    for _ in range(100):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24")
        if f" {net.network_address + 1}/" not in used and f" {net.network_address + 2}/" not in used:
            return net
    raise RuntimeError("no free 10.200-250.x.0/24 subnet for the impaired link")


class ImpairedLink:
    def __init__(self, name: str) -> None:
        self.namespace = f"vz-{name}-{os.getpid()}"
        tag = f"{os.getpid() % 100000:05d}"
        self.host_if, self.ns_if = f"vzh{tag}", f"vzn{tag}"
        subnet = _free_subnet()
        self.host_address = str(subnet.network_address + 1)
        self.ns_address = str(subnet.network_address + 2)
        self._created = False

    @classmethod
    def create(cls, name: str) -> "ImpairedLink":
        reason = available()
        if reason is not None:
            raise NetnsUnavailable(reason)
        link = cls(name)
        link._create()
        return link

    def _create(self) -> None:
        try:
            _run("ip", "netns", "add", self.namespace)
            self._created = True
            self._in_ns("ip", "link", "set", "lo", "up")
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.namespace)
            _run("ip", "addr", "add", f"{self.host_address}/24", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            self._in_ns("ip", "addr", "add", f"{self.ns_address}/24", "dev", self.ns_if)
            self._in_ns("ip", "link", "set", self.ns_if, "up")
        except Exception:
            self.delete()
            raise

    def _in_ns(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.namespace, *args)

    def cap_downlink_kbit(self, kbit: int, burst_bytes: int = 4096, queue_ms: int = 200) -> None:
        """Token bucket on the link into the namespace: what the client there can receive."""
        _run("tc", "qdisc", "replace", "dev", self.host_if, "root", "tbf", "rate", f"{kbit}kbit",
             "burst", str(burst_bytes), "latency", f"{queue_ms}ms")

    def downlink_qdisc(self) -> str:
        return _run("tc", "-s", "qdisc", "show", "dev", self.host_if)

    def drop_udp_percent(self, percent: int) -> None:
        """Drops that share of UDP packets in both directions, at random (nftables numgen)."""
        self._in_ns("nft", "add", "table", "inet", "vzloss")
        for chain, hook in (("in", "input"), ("out", "output")):
            self._in_ns("nft", f"add chain inet vzloss {chain} {{ type filter hook {hook} priority 0; }}")
            self._in_ns("nft", f"add rule inet vzloss {chain} meta l4proto udp numgen random mod 100 < {percent} counter drop")

    def dropped_packets(self) -> int:
        """Packets the loss rules dropped so far (0 without them)."""
        try:
            rules = self._in_ns("nft", "list", "table", "inet", "vzloss")
        except RuntimeError:
            return 0
        return sum(int(line.split("packets", 1)[1].split()[0]) for line in rules.splitlines() if "counter packets" in line)

    def command(self, args: list[str]) -> list[str]:
        """`args` as a command that runs inside the namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]

    def delete(self) -> None:
        if not self._created:
            return
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)
        self._created = False

    def __enter__(self) -> "ImpairedLink":
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.delete()
