"""Throwaway certificates for the TLS tests, made with `cryptography`: a CA the service trusts for feeds,
the server's certificate, a feed's good client certificate, an expired one, one from a CA nobody trusts, and
one the CA has revoked, with the CA's revocation list (and lists that cannot be used: past their next update,
or signed by another CA)."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FEED_SUBJECT = "CN=rxr-interface-engine,O=Riverside Hospital"


@dataclass(frozen=True)
class Pki:
    ca: Path  # the feeds' CA (the service trusts it for client certificates; clients trust it for the server)
    server_cert: Path
    server_key: Path
    client: tuple[Path, Path]  # a feed's certificate and key, signed by `ca`
    expired: tuple[Path, Path]  # signed by `ca`, validity ended yesterday
    stranger: tuple[Path, Path]  # signed by a CA the service does not trust
    revoked: tuple[Path, Path]  # signed by `ca`, then revoked: listed in `crl`
    crl: Path  # `ca`'s current revocation list (PEM), listing `revoked`
    crl_overdue: Path  # `ca`'s list, past its next update
    crl_other_ca: Path  # a list signed by the CA the service does not trust

    def client_context(self, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        """What a feed's TLS client uses: trusts the service's CA, presents `cert` (or nothing)."""
        context = ssl.create_default_context(cafile=self.ca)
        if cert is not None:
            context.load_cert_chain(*cert)
        return context


def _name(text: str) -> x509.Name:
    """`CN=...,O=...` as a certificate holds it (organisation first: RFC 4514 writes it back to front)."""
    parts = dict(part.split("=", 1) for part in text.split(","))
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, parts["CN"])]
    if "O" in parts:
        attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, parts["O"]))
    return x509.Name(attributes)


def _issue(folder: Path, stem: str, subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False, server: bool = False, days: tuple[int, int] = (-1, 30),
           ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + timedelta(days=days[0])).not_valid_after(now + timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if issuer_cert is not None:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_cert.public_key()), critical=False)  # type: ignore[arg-type]
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


def _revocation_list(path: Path, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
                     revoked: list[x509.Certificate], days: tuple[int, int] = (-1, 7)) -> Path:
    """A CRL as a CA publishes it (PEM): issued `days[0]` from now, next update `days[1]` from now."""
    now = datetime.now(UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer[0].subject)
               .last_update(now + timedelta(days=days[0])).next_update(now + timedelta(days=days[1])))
    for cert in revoked:
        builder = builder.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                                                  .revocation_date(now - timedelta(hours=1)).build())
    path.write_bytes(builder.sign(issuer[1], hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


def server_certificate(folder: Path, days: tuple[int, int]) -> tuple[Path, Path]:
    """A listener's certificate and key (self-signed) valid from `days[0]` to `days[1]` from now."""
    folder.mkdir(parents=True, exist_ok=True)
    _, _, cert, key = _issue(folder, "server", "CN=localhost,O=sharedcare", None, server=True, days=days)
    return cert, key


def make_pki(folder: Path) -> Pki:
    ca_cert, ca_key, ca_path, _ = _issue(folder, "ca", "CN=ICS feeds CA,O=Test ICS", None, ca=True, days=(-2, 365))
    _, _, server_cert, server_key = _issue(folder, "server", "CN=localhost,O=sharedcare", (ca_cert, ca_key),
                                           server=True)
    _, _, client_cert, client_key = _issue(folder, "client", FEED_SUBJECT, (ca_cert, ca_key))
    _, _, old_cert, old_key = _issue(folder, "expired", "CN=old-engine,O=Riverside Hospital", (ca_cert, ca_key),
                                     days=(-30, -1))
    other = _issue(folder, "other-ca", "CN=Someone else's CA", None, ca=True, days=(-2, 365))
    _, _, stranger_cert, stranger_key = _issue(folder, "stranger", "CN=stranger-engine,O=Elsewhere",
                                               (other[0], other[1]))
    revoked, _, revoked_cert, revoked_key = _issue(folder, "revoked", "CN=lost-laptop-engine,O=Riverside Hospital",
                                                   (ca_cert, ca_key))
    return Pki(ca_path, server_cert, server_key, (client_cert, client_key), (old_cert, old_key),
               (stranger_cert, stranger_key), (revoked_cert, revoked_key),
               _revocation_list(folder / "ca-crl.pem", (ca_cert, ca_key), [revoked]),
               _revocation_list(folder / "ca-crl-overdue.pem", (ca_cert, ca_key), [revoked], days=(-14, -7)),
               _revocation_list(folder / "other-ca-crl.pem", (other[0], other[1]), []))


@dataclass(frozen=True)
class Chain:
    """A root CA above an issuing (intermediate) CA, both in the client CA file, with a revocation list from
    the intermediate alone: what a region's PKI publishes when only the intermediate issues feed certificates."""

    cas: Path  # the root and the intermediate, one file
    crl: Path  # the intermediate's list (revoking nothing)
    from_intermediate: tuple[Path, Path]  # a feed certificate the intermediate issued
    from_root: tuple[Path, Path]  # one the root issued directly: its list is not configured


def make_chain(folder: Path) -> Chain:
    root = _issue(folder, "root", "CN=ICS root CA,O=Test ICS", None, ca=True, days=(-2, 365))
    intermediate = _issue(folder, "intermediate", "CN=ICS feeds issuing CA,O=Test ICS", (root[0], root[1]), ca=True,
                          days=(-2, 365))
    cas = folder / "root-and-intermediate.pem"
    cas.write_bytes(root[2].read_bytes() + intermediate[2].read_bytes())
    _, _, leaf_cert, leaf_key = _issue(folder, "intermediate-leaf", FEED_SUBJECT, (intermediate[0], intermediate[1]))
    _, _, direct_cert, direct_key = _issue(folder, "root-leaf", "CN=root-issued-engine,O=Riverside Hospital",
                                           (root[0], root[1]))
    return Chain(cas, _revocation_list(folder / "intermediate-crl.pem", (intermediate[0], intermediate[1]), []),
                 (leaf_cert, leaf_key), (direct_cert, direct_key))


def revocation_list(pki: Pki, path: Path, revoked: list[Path]) -> Path:
    """A new list from `pki`'s CA revoking these certificates (as the CA publishes its next one)."""
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key((pki.ca.parent / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return _revocation_list(path, (ca, key), [x509.load_pem_x509_certificate(p.read_bytes()) for p in revoked])
