"""Minimal JWS (compact JWT) signing and verification."""
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .util import b64url_decode, b64url_encode

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def encode(claims, key, headers):
    h = {"typ": "JWT", "alg": "RS256"}
    h.update(headers)
    signing_input = (b64url_encode(json.dumps(h, separators=(",", ":")).encode()) + "." +
                     b64url_encode(json.dumps(claims, separators=(",", ":")).encode()))
    sig = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url_encode(sig)


def split(token):
    """Return (header, claims, signing_input, signature) without verifying."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("bad JWT segments")
    return header, claims, (parts[0] + "." + parts[1]).encode("ascii"), b64url_decode(parts[2])


def verify_signature(header, signing_input, signature, public_key):
    """Check an RS*/PS*/ES* signature. Returns True or False."""
    alg = header.get("alg", "")
    if len(alg) != 5 or alg[2:] not in _HASHES:
        return False
    h = _HASHES[alg[2:]]()
    try:
        if alg.startswith("RS") and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signing_input, padding.PKCS1v15(), h)
        elif alg.startswith("PS") and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, signing_input,
                              padding.PSS(padding.MGF1(h), padding.PSS.AUTO), h)
        elif alg.startswith("ES") and isinstance(public_key, ec.EllipticCurvePublicKey):
            n = (public_key.curve.key_size + 7) // 8
            if len(signature) != 2 * n:
                return False
            r = int.from_bytes(signature[:n], "big")
            s = int.from_bytes(signature[n:], "big")
            public_key.verify(utils.encode_dss_signature(r, s), signing_input, ec.ECDSA(h))
        else:
            return False
    except InvalidSignature:
        return False
    return True
