"""Injected faults (admin /_admin/faults): which request a fault takes and
the answer it gives instead of the real one."""
import fnmatch
import random

from .messages import JSON_CT, Response, json_response
from .util import HttpError, jdump


class Fault:
    KINDS = ("429", "500", "503", "status", "reset", "delay", "hang", "body")

    def __init__(self, spec, fid):
        self.id = fid
        kind = str(spec.get("kind", "")).lower()
        if kind in ("throttle", "throttled"):
            kind = "429"
        if kind not in self.KINDS:
            raise HttpError(400, "BadParameter", "fault kind must be one of %s" % (self.KINDS,))
        self.kind = kind
        self.match = spec.get("match", spec.get("route", "*"))
        self.method = (spec.get("method") or "*").upper()
        self.identity = spec.get("identity", "*")
        self.status = int(spec.get("status", {"429": 429, "500": 500, "503": 503,
                                              "body": 200}.get(kind, 500)))
        # kind "body": this answer as it is (a string is sent as its UTF-8
        # bytes, anything else as JSON), with these extra headers.
        self.body = spec.get("body", "")
        self.headers = spec.get("headers") or {}
        if kind == "body" and not isinstance(self.headers, dict):
            raise HttpError(400, "BadParameter", "fault headers must be an object")
        self.code = spec.get("code")
        self.retry_after = spec.get("retry_after")
        self.delay_ms = int(spec.get("delay_ms", 0))
        self.hang_ms = int(spec.get("hang_ms", 600000))
        self.rate = spec.get("rate")
        cnt = spec.get("count")
        if cnt is None and self.rate is None:
            cnt = 1
        self.remaining = None if cnt is None else int(cnt)
        self.skip = int(spec.get("skip", 0))
        self.hits = 0
        self.spec = dict(spec)

    def describe(self):
        return {"id": self.id, "kind": self.kind, "match": self.match, "method": self.method,
                "identity": self.identity, "status": self.status, "retry_after": self.retry_after,
                "delay_ms": self.delay_ms, "hang_ms": self.hang_ms, "rate": self.rate,
                "remaining": self.remaining, "skip": self.skip, "hits": self.hits}



class FaultsMixin:
    """Emulator methods that pick and play faults."""

    def pick_fault(self, route, ident, method):
        if not self.faults:
            return None
        with self.lock:
            for f in self.faults:
                if not fnmatch.fnmatchcase(route.lower(), f.match.lower()):
                    continue
                if f.method != "*" and f.method != method:
                    continue
                if not fnmatch.fnmatchcase(ident or "-", f.identity):
                    continue
                if f.skip > 0:
                    f.skip -= 1
                    continue
                if f.rate is not None and random.random() >= float(f.rate):
                    continue
                f.hits += 1
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self.faults.remove(f)
                key = "%s:%s" % (route, f.kind)
                self.counters["faults"][key] = self.counters["faults"].get(key, 0) + 1
                return f
        return None

    def fault_response(self, f, vault_style=True):
        """Response for a fault, or None for a delay (then the request proceeds)."""
        if f.kind == "delay":
            self.shutdown_event.wait(f.delay_ms / 1000.0)
            return None
        if f.kind == "reset":
            return Response(action="reset")
        if f.kind == "hang":
            return Response(action="hang", hold=f.hang_ms / 1000.0)
        headers = []
        if f.retry_after is not None:
            headers.append(("Retry-After", str(f.retry_after)))
        if f.kind == "body":
            raw = f.body.encode() if isinstance(f.body, str) else jdump(f.body)
            headers.append(("Content-Type", JSON_CT))
            headers.extend((str(k), str(v)) for k, v in f.headers.items())
            return Response(f.status, raw, headers)
        if f.status == 429:
            body = {"error": {"code": f.code or "Throttled",
                              "message": "Request was not processed because too many requests "
                                         "were received. Reason: VaultRequestTypeLimitReached"}}
        elif f.status == 503:
            body = {"error": {"code": f.code or "ServiceUnavailable",
                              "message": "The service is temporarily unavailable."}}
        else:
            body = {"error": {"code": f.code or "InternalServerError",
                              "message": "An internal server error occurred."}}
        if not vault_style:
            body = {"error": body["error"]["code"], "error_description": body["error"]["message"]}
        return json_response(f.status, body, headers)
