"""Throwaway TLS material for the security tests: one CA, server certificates it issues.

Everything is PEM, the format both the local broker's ``BrokerSecurity`` and the
clients' ``kafka.ssl_*`` settings take. Keys are P-256 and unencrypted (PKCS#8),
certificates are valid for a day. Test use only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "ServerCert"]


@dataclass(frozen=True)
class ServerCert:
    certfile: Path  # PEM certificate
    keyfile: Path  # PEM private key (PKCS#8, unencrypted)


class CertificateAuthority:
    """A self-signed CA written to ``directory/ca.pem``; ``issue`` signs server certificates."""

    def __init__(self, directory: Path, name: str = "streamrec test CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        self._cert = (
            _builder(subject, subject, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)  # fmt: skip
            .sign(self._key, hashes.SHA256())
        )
        self.cafile = self.directory / "ca.pem"
        self.cafile.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, hostname: str, stem: str | None = None) -> ServerCert:
        """A server certificate for ``hostname`` (subject CN and the only DNS name), signed by this CA."""
        stem = stem or hostname
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _builder(_name(hostname), self._cert.subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)  # fmt: skip
            .sign(self._key, hashes.SHA256())
        )
        certfile, keyfile = self.directory / f"{stem}.crt.pem", self.directory / f"{stem}.key.pem"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))  # fmt: skip
        keyfile.chmod(0o600)
        return ServerCert(certfile, keyfile)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
