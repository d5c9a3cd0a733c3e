"""Certificates made at test time, for the SDK's TLS tests and the server's: a CA with server and client
certificates, and a second, unrelated CA with its own client certificate (what an attacker or a
misconfigured client holds)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        cert.write_bytes(self.cert)
        key.write_bytes(self.key)
        key.chmod(0o600)
        return cert, key


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server: Pem
    """Valid for 127.0.0.1 and localhost."""
    named_server: Pem
    """Valid for mentallama.test only (server-name override)."""
    client: Pem
    other_ca: bytes
    other_client: Pem
    """A client certificate signed by `other_ca`, which the server does not trust."""


def _issue(subject: str, issuer: Issuer | None, *, ca: bool = False, names: tuple[str, ...] = (),
           ips: tuple[str, ...] = ()) -> Issuer:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _pem(pair: Issuer) -> Pem:
    cert, key = pair
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),  # fmt: skip
    )


def make_pki() -> Pki:
    ca = _issue("mentallama test CA", None, ca=True)
    other = _issue("some other CA", None, ca=True)
    return Pki(
        ca=_pem(ca).cert,
        server=_pem(_issue("mentallama server", ca, names=("localhost",), ips=("127.0.0.1",))),
        named_server=_pem(_issue("named server", ca, names=("mentallama.test",))),
        client=_pem(_issue("mentallama client", ca)),
        other_ca=_pem(other).cert,
        other_client=_pem(_issue("stranger", other)),
    )
