"""Throwaway PKI for the local control plane, made with the openssl CLI.

One CA signs the API server's serving certificate and a client certificate per identity;
the API server trusts the CA for client authentication (x509 CN = user, O = groups), so
every component gets a real identity that RBAC then judges. Keys are EC P-256: generating
them takes milliseconds, which keeps a cold cluster start short.

The openssl CLI rather than the `cryptography` package: it is on every machine we run on
and keeps this module free of third-party imports.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ec_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=path.parent)


def make_ca(dir: Path) -> Cert:
    ca = Cert(dir / "ca.crt", dir / "ca.key")
    _ec_key(ca.key)
    _openssl("req", "-x509", "-new", "-key", str(ca.key), "-subj", "/CN=kuberl-local-ca",
             "-days", "30", "-out", str(ca.cert),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=dir)
    return ca


def issue(ca: Cert, dir: Path, name: str, *, cn: str, orgs: tuple[str, ...] = (),
          server_sans: tuple[str, ...] = ()) -> Cert:
    """A leaf certificate signed by `ca`: a server cert when `server_sans` is given
    (entries like "IP:127.0.0.1", "DNS:localhost"), otherwise a client cert."""
    out = Cert(dir / f"{name}.crt", dir / f"{name}.key")
    _ec_key(out.key)
    subject = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
    csr = dir / f"{name}.csr"
    _openssl("req", "-new", "-key", str(out.key), "-subj", subject, "-out", str(csr), cwd=dir)
    ext = dir / f"{name}.ext"
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]
    if server_sans:
        lines += ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(server_sans)]
    else:
        lines += ["extendedKeyUsage=clientAuth"]
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(out.cert), cwd=dir)
    csr.unlink()
    ext.unlink()
    return out


def make_service_account_keys(dir: Path) -> tuple[Path, Path]:
    """RSA key pair the API server signs service-account tokens with (and verifies them by)."""
    key, pub = dir / "sa.key", dir / "sa.pub"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key), cwd=dir)
    _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub), cwd=dir)
    return key, pub
