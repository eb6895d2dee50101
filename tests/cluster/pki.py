"""Certificates and kubeconfigs for the local control plane, made with the openssl CLI (no Python
crypto dependency). EC P-256 keys: generating the whole set takes a few tens of milliseconds."""

from __future__ import annotations

import base64
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# The in-cluster names of the API server: its serving certificate must cover them as well as loopback.
SERVICE_IP = "10.96.0.1"
APISERVER_SANS = [
    "IP:127.0.0.1", "DNS:localhost", f"IP:{SERVICE_IP}", "DNS:kubernetes", "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
]
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is required to create the test cluster's certificates")
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


class Pki:
    """A throw-away CA and the key pairs signed by it, all under one directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = KeyPair(self.dir / "ca.crt", self.dir / "ca.key")
        _openssl("req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
                 "-subj", "/CN=tuneguard-test-ca",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=self.dir)

    def issue(self, name: str, subject: str, *, server_sans: list[str] | None = None) -> KeyPair:
        """A leaf certificate: a serving one when server_sans is given, a client one otherwise
        (Kubernetes reads the user from CN and the groups from O)."""
        usage = ["-addext", "extendedKeyUsage=serverAuth", "-addext", "subjectAltName=" + ",".join(server_sans)] \
            if server_sans else ["-addext", "extendedKeyUsage=clientAuth"]
        _openssl("req", "-x509", "-CA", "ca.crt", "-CAkey", "ca.key", *EC_KEY,
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "3650", "-subj", subject,
                 "-addext", "basicConstraints=critical,CA:FALSE", *usage, cwd=self.dir)
        return KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    def signing_key(self, name: str) -> KeyPair:
        """A bare key pair (cert = the public key), for ServiceAccount token signing."""
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f"{name}.key",
                 cwd=self.dir)
        _openssl("pkey", "-in", f"{name}.key", "-pubout", "-out", f"{name}.pub", cwd=self.dir)
        return KeyPair(self.dir / f"{name}.pub", self.dir / f"{name}.key")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, *, server: str, ca: Path, user: str,
                     client: KeyPair | None = None, token: str | None = None) -> Path:
    """A self-contained kubeconfig (certificates embedded), so it can be copied or moved freely."""
    credentials: dict = {}
    if client is not None:
        credentials = {"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)}
    if token is not None:
        credentials["token"] = token
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "tuneguard-test", "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "tuneguard-test", "context": {"cluster": "tuneguard-test", "user": user}}],
        "current-context": "tuneguard-test",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
