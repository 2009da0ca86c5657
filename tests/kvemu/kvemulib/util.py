"""Small helpers shared by the emulator modules."""
import base64
import json
import time
import uuid


def b64url_encode(data):
    """Unpadded base64url, as the Key Vault REST API uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    """Decode base64url; padding and the standard alphabet are accepted too."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    s = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    if len(s) % 4 == 1:
        raise ValueError("bad base64url length")
    s += "=" * (-len(s) % 4)
    return base64.b64decode(s, altchars=b"-_", validate=True)


def b64url_decode_strict(text):
    """Decode base64url as the service does for request values: the
    standard alphabet's + and / are refused, trailing padding is not."""
    if not isinstance(text, str) or "+" in text or "/" in text:
        raise ValueError("not base64url")
    return b64url_decode(text)


def int_to_b64url(n, length=None):
    if length is None:
        length = max(1, (n.bit_length() + 7) // 8)
    return b64url_encode(n.to_bytes(length, "big"))


def b64url_to_int(text):
    return int.from_bytes(b64url_decode(text), "big")


def now():
    return int(time.time())


def new_version():
    return uuid.uuid4().hex


def jdump(obj):
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class HttpError(Exception):
    """An error that becomes an HTTP response."""

    def __init__(self, status, code=None, message="", inner=None, headers=None, body=None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.headers = headers or []
        self.body = body

    def payload(self):
        if self.body is not None:
            return self.body
        err = {"code": self.code, "message": self.message}
        if self.inner:
            err["innererror"] = {"code": self.inner}
        return {"error": err}
