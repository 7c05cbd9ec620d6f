"""A throw-away certificate authority for the federation tests.

Each test session makes fresh CAs in a temp dir (nothing is committed, nothing expires
between runs) with the `cryptography` package the suite already pins. Every server gets a
certificate for its domain and the domain's subdomains it hosts (e.g. `conference.<domain>`)
as DNS subjectAltNames (RFC 6125 DNS-IDs, what Prosody, ejabberd and Starling check for
s2s, XEP-0178), usable both as TLS server and TLS client certificate: in s2s the
initiating server presents it as a client certificate for SASL EXTERNAL.

A second, unrelated CA (`TestCa("untrusted ...")`) signs certificates nobody trusts, for
the tests where authentication must fall back to XEP-0220 dialback.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Starling conformance"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class IssuedCert:
    """PEM files of one server's certificate."""

    cert: Path      # the end-entity certificate alone
    key: Path       # its private key (PKCS#8, unencrypted)
    chain: Path     # certificate then CA certificate
    bundle: Path    # key, certificate and CA certificate in one file (ejabberd's certfiles)
    names: tuple[str, ...]


class TestCa:
    """`TestCa(dir, "name")` writes `<dir>/<slug>-ca.pem`; `issue(...)` makes server certs."""

    __test__ = False   # not a pytest test class

    def __init__(self, directory: Path, label: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.label = label
        self.slug = "".join(c if c.isalnum() else "-" for c in label.lower())
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{label} CA"))
            .issuer_name(_name(f"{label} CA"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=8))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self.ca_file = self.dir / f"{self.slug}-ca.pem"
        self.ca_file.write_bytes(self.cert_pem)

    def issue(self, domain: str, *subdomains: str, file_stem: str | None = None) -> IssuedCert:
        """A certificate for `domain` and each `<sub>.<domain>` (e.g. issue(d, "conference"))."""
        names = (domain,) + tuple(f"{s}.{domain}" for s in subdomains)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(domain))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = self.dir / (file_stem or f"{domain}.{self.slug}")
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        out = IssuedCert(cert=stem.with_name(stem.name + ".crt"),
                         key=stem.with_name(stem.name + ".key"),
                         chain=stem.with_name(stem.name + ".chain.pem"),
                         bundle=stem.with_name(stem.name + ".bundle.pem"),
                         names=names)
        out.cert.write_bytes(cert_pem)
        out.key.write_bytes(_key_pem(key))
        out.key.chmod(0o600)
        out.chain.write_bytes(cert_pem + self.cert_pem)
        out.bundle.write_bytes(_key_pem(key) + cert_pem + self.cert_pem)
        return out
