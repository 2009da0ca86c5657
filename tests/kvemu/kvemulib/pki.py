"""Certificates and keys generated per state directory."""
import datetime
import hashlib
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .util import b64url_encode


def _write(path, data, mode=0o600):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kvemu"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _serial():
    return x509.random_serial_number()


def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    name = _name("kvemu test CA")
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key, ca_cert, dns_names, ips):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    sans = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def make_client_cert(cn, days=365):
    """Self-signed RSA certificate, as registered for an app's certificate credential."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.utcnow() - datetime.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(_serial())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256()))
    return key, cert


def thumbprints(cert):
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"sha1": hashlib.sha1(der).digest(), "sha256": hashlib.sha256(der).digest()}


def x5t(cert):
    return b64url_encode(thumbprints(cert)["sha1"])


def load_certs_from_pem(data):
    """All certificates in a PEM blob (a combined key+cert file is fine)."""
    if isinstance(data, str):
        data = data.encode()
    out = []
    marker = b"-----BEGIN CERTIFICATE-----"
    end = b"-----END CERTIFICATE-----"
    pos = 0
    while True:
        i = data.find(marker, pos)
        if i < 0:
            break
        j = data.find(end, i)
        if j < 0:
            break
        out.append(x509.load_pem_x509_certificate(data[i:j + len(end)] + b"\n"))
        pos = j + len(end)
    return out


class StatePki:
    """CA, server certificate and token-signing key kept in the state dir."""

    def __init__(self, state_dir, dns_names, ips=("127.0.0.1", "::1")):
        self.dir = state_dir
        self.ca_path = os.path.join(state_dir, "ca.pem")
        self.ca_key_path = os.path.join(state_dir, "ca.key")
        self.cert_path = os.path.join(state_dir, "server.pem")
        self.key_path = os.path.join(state_dir, "server.key")
        self.signing_key_path = os.path.join(state_dir, "token-signing.key")
        if os.path.exists(self.ca_path) and os.path.exists(self.ca_key_path):
            with open(self.ca_key_path, "rb") as f:
                self.ca_key = serialization.load_pem_private_key(f.read(), None)
            with open(self.ca_path, "rb") as f:
                self.ca_cert = x509.load_pem_x509_certificate(f.read())
        else:
            self.ca_key, self.ca_cert = make_ca()
            _write(self.ca_key_path, key_pem(self.ca_key))
            _write(self.ca_path, cert_pem(self.ca_cert), 0o644)
        # The server certificate is cheap: issue it afresh for the current names.
        skey, scert = make_server_cert(self.ca_key, self.ca_cert, dns_names, ips)
        _write(self.key_path, key_pem(skey))
        _write(self.cert_path, cert_pem(scert), 0o644)
        if os.path.exists(self.signing_key_path):
            with open(self.signing_key_path, "rb") as f:
                self.signing_key = serialization.load_pem_private_key(f.read(), None)
        else:
            self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write(self.signing_key_path, key_pem(self.signing_key))
        der = self.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.signing_kid = b64url_encode(hashlib.sha1(der).digest())
