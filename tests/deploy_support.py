"""deploy/'s artefacts made runnable on one machine, changing only what the operator changes.

Every file is used as shipped except for what its own comments mark CHANGE (addresses,
ports, certificate paths, passwords) and where logs and state go: the node addresses
become the test's nodes, the certificate a throwaway self-signed one, ports free ones.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TEST_PASSWORD = "deploy-test-password-" + "z" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 15.0, *, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# --- nginx -------------------------------------------------------------------------------------


@dataclass
class NginxSite:
    workdir: Path
    main_conf: Path
    http_port: int
    https_port: int

    @property
    def access_log(self) -> Path:
        return self.workdir / "logs" / "verzilvering.access.log"


def nginx_site(conf: Path, workdir: Path, nodes: list[str], cert: Path, key: Path) -> NginxSite:
    """`conf` (a deploy/nginx site) with the operator's changes, inside a minimal nginx.conf
    that keeps pid, logs and temp files in `workdir`."""
    text = conf.read_text()
    http_port, https_port = free_port(), free_port()
    # The upstream: the node lines become the test's nodes (the first keeps the options).
    upstream = re.search(r"upstream verzilvering_nodes \{(.*?)\n\}", text, re.S)
    assert upstream, conf
    body = upstream.group(1)
    node_lines = re.findall(r"^\s*server \S+( [^;]*)?;", body, re.M)
    assert node_lines, f"{conf.name}: no server lines in the upstream"
    options = node_lines[0] or ""
    first = True

    def replace_nodes(match: re.Match[str]) -> str:
        nonlocal first
        if not first:
            return ""
        first = False
        return "\n".join(f"    server {node}{options};" for node in nodes)

    body = re.sub(r"^\s*server \S+( [^;]*)?;", replace_nodes, body, flags=re.M)
    text = text[: upstream.start(1)] + body + text[upstream.end(1) :]
    # Listen on free loopback ports (IPv6 lines dropped: the test speaks IPv4).
    text = re.sub(r"^\s*listen \[::\]:\d+[^;]*;\n", "", text, flags=re.M)
    text = re.sub(r"listen 443 ", f"listen 127.0.0.1:{https_port} ", text)
    text = re.sub(r"listen 80( default_server)?;", lambda m: f"listen 127.0.0.1:{http_port}{m.group(1) or ''};", text)
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text)
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    text = text.replace("/var/log/nginx/", f"{logs}/")
    site = workdir / conf.name
    site.write_text(text)
    main = workdir / "nginx.conf"
    main.write_text(
        f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {logs}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    include {site};
}}
"""
    )
    return NginxSite(workdir, main, http_port, https_port)


def nginx() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


# --- Redis ---------------------------------------------------------------------------------------


def redis_from_deploy_conf(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server with deploy/redis/redis.conf, overriding on its command line only what the
    operator sets (bind, port, password) and where its files go."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", str(DEPLOY / "redis" / "redis.conf"), "--bind", "127.0.0.1", "--port", str(port),
         "--requirepass", TEST_PASSWORD, "--masterauth", TEST_PASSWORD, "--dir", str(workdir),
         "--daemonize", "no"],
        stdout=(workdir / "redis.log").open("wb"), stderr=subprocess.STDOUT,
    )
    wait_for_port(port, process=process)
    return process, port


def stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
