"""Throw-away X.509 material for the test registries.

The registry harness needs three kinds of key material, all generated on the
fly with ``cryptography`` and written as PEM files:

* a self-signed certificate authority (:func:`make_ca`);
* a TLS server certificate signed by that CA, valid for ``127.0.0.1``,
  ``::1`` and ``localhost`` (:func:`make_server_cert`);
* a token-signing key and certificate signed by a CA (:func:`make_token_signing_cert`),
  used by :class:`tests.harness.tokenissuer.TokenIssuer` to sign JWTs which the
  registry verifies against the CA (its ``auth.token.rootcertbundle``).

The certificates carry the extensions strict verifiers insist on (critical
basic constraints and key usage, subject/authority key identifiers), so they
are accepted by Go's ``crypto/x509`` as well as by OpenSSL with
``VERIFY_X509_STRICT``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "KeyPair",
    "make_ca",
    "make_server_cert",
    "make_token_signing_cert",
]

#: Private key types this module generates.
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: Names the server certificate is valid for.
SERVER_SANS: tuple[x509.GeneralName, ...] = (
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
    x509.DNSName("localhost"),
)

_VALIDITY = datetime.timedelta(days=2)
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA written to disk, plus the in-memory objects needed to sign with it.

    Attributes:
        cert_file: PEM file holding the CA certificate (use it as a trust anchor).
        key_file: PEM file holding the CA's unencrypted private key.
        cert: The parsed CA certificate.
        key: The CA's private key.
    """

    cert_file: Path
    key_file: Path
    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True)
class KeyPair:
    """A leaf certificate and its private key, written to disk.

    Attributes:
        cert_file: PEM file holding the leaf certificate.
        key_file: PEM file holding the unencrypted private key (PKCS#8).
        ca_file: PEM file of the CA that signed ``cert_file``.
        cert: The parsed leaf certificate.
        key: The leaf's private key.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    cert: x509.Certificate
    key: PrivateKey


def _new_key(key_type: Literal["rsa", "ec"]) -> PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported key type {key_type!r}")


def _write_pem(path: Path, cert: x509.Certificate, key: PrivateKey) -> tuple[Path, Path]:
    """Write ``cert`` to ``path.crt`` and ``key`` to ``path.key``; return both paths."""
    cert_file = path.with_suffix(".crt")
    key_file = path.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def _builder(subject: str, issuer: x509.Name | None, key: PrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _leaf_key_usage(key: PrivateKey) -> x509.KeyUsage:
    # keyEncipherment only makes sense for RSA keys (RSA key transport).
    return x509.KeyUsage(
        digital_signature=True,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _sign_leaf(
    ca: CertificateAuthority,
    subject: str,
    key: PrivateKey,
    extra: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    builder = (
        _builder(subject, ca.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(key), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(ca.key, hashes.SHA256())


def make_ca(directory: Path, name: str = "lazyfs test CA") -> CertificateAuthority:
    """Create a self-signed CA and write it as ``ca.crt`` / ``ca.key`` in ``directory``.

    Args:
        directory: Existing directory to write the PEM files into.
        name: Common name of the CA.

    Returns:
        The CA, usable with :func:`make_server_cert` and :func:`make_token_signing_cert`.
    """
    key = _new_key("ec")
    cert = (
        _builder(name, None, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = _write_pem(Path(directory) / "ca", cert, key)
    return CertificateAuthority(cert_file=cert_file, key_file=key_file, cert=cert, key=key)


def make_server_cert(directory: Path, ca: CertificateAuthority, name: str = "server") -> KeyPair:
    """Create a TLS server certificate for loopback, signed by ``ca``.

    The certificate's subject alternative names are the IP addresses
    ``127.0.0.1`` and ``::1`` (as iPAddress entries, not DNS names) and the DNS
    name ``localhost``; its extended key usage is serverAuth.

    Args:
        directory: Existing directory; files ``<name>.crt`` and ``<name>.key`` are written.
        ca: The signing CA (from :func:`make_ca`).
        name: Base name of the files.

    Returns:
        The key pair; ``ca_file`` is ``ca.cert_file``.
    """
    key = _new_key("ec")
    cert = _sign_leaf(
        ca,
        "127.0.0.1",
        key,
        [
            (x509.SubjectAlternativeName(list(SERVER_SANS)), False),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    cert_file, key_file = _write_pem(Path(directory) / name, cert, key)
    return KeyPair(cert_file=cert_file, key_file=key_file, ca_file=ca.cert_file, cert=cert, key=key)


def make_token_signing_cert(
    directory: Path,
    ca: CertificateAuthority,
    name: str = "token-signing",
    key_type: Literal["rsa", "ec"] = "rsa",
) -> KeyPair:
    """Create a key and certificate for signing registry bearer tokens.

    The registry is configured with ``ca.cert_file`` as its
    ``auth.token.rootcertbundle``; the token issuer puts this certificate in the
    ``x5c`` header of each JWT, and the registry verifies it chains to the CA.

    Args:
        directory: Existing directory; files ``<name>.crt`` and ``<name>.key`` are written.
        ca: The signing CA (from :func:`make_ca`).
        name: Base name of the files.
        key_type: ``"rsa"`` (2048-bit, tokens signed RS256) or ``"ec"``
            (P-256, tokens signed ES256).

    Returns:
        The key pair; ``ca_file`` is ``ca.cert_file``.
    """
    key = _new_key(key_type)
    cert = _sign_leaf(ca, "lazyfs test token signer", key, [])
    cert_file, key_file = _write_pem(Path(directory) / name, cert, key)
    return KeyPair(cert_file=cert_file, key_file=key_file, ca_file=ca.cert_file, cert=cert, key=key)
