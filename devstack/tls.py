"""The devstack's own certificate authority and the server certificate its HTTPS front serves.

Generated once into `<state>/tls/` (keys 0600): `ca.pem` is what clients verify against
(endpoints.json `opensearch_ca`, the Airflow connection's `ca_certs`); `server.pem` /
`server-key.pem` are for 127.0.0.1, ::1 and localhost. Extensions are set as strict verifiers
(Python 3.13's VERIFY_X509_STRICT) require them: key usage, EKU, SKI/AKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS, SERVER_DAYS, RENEW_BEFORE_DAYS = 3650, 825, 30


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def files(state: Path) -> TlsFiles:
    d = Path(state) / "tls"
    return TlsFiles(d / "ca.pem", d / "server.pem", d / "server-key.pem")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    if private:
        tmp.chmod(0o600)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _expiring(path: Path) -> bool:
    if not path.exists():
        return True
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return left < dt.timedelta(days=RENEW_BEFORE_DAYS)


def ensure(state: Path) -> TlsFiles:
    """The CA (kept while valid, so clients' trust survives restarts) and a server certificate
    signed by it (re-issued when missing, near expiry or not from this CA)."""
    f = files(state)
    f.ca.parent.mkdir(parents=True, exist_ok=True)
    f.ca.parent.chmod(0o700)
    ca_key_path = f.ca.with_name("ca-key.pem")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    if _expiring(f.ca) or not ca_key_path.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "batchvec devstack"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "batchvec devstack CA")])
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(f.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
        f.cert.unlink(missing_ok=True)
    ca_cert = x509.load_pem_x509_certificate(f.ca.read_bytes())
    if _expiring(f.cert) or not f.key.exists() or (
            x509.load_pem_x509_certificate(f.cert.read_bytes()).issuer != ca_cert.subject):
        _issue_server(f, ca_cert, serialization.load_pem_private_key(ca_key_path.read_bytes(), None), now)
    return f


def _issue_server(f: TlsFiles, ca_cert, ca_key, now) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(f.key, _key_pem(key), private=True)
    _write(f.cert, cert.public_bytes(serialization.Encoding.PEM))
