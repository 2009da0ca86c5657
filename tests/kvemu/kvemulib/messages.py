"""A request as the handlers see it, and the answer they give."""
import json

from .util import HttpError, jdump

JSON_CT = "application/json; charset=utf-8"


class Request:
    __slots__ = ("method", "host", "path", "query", "headers", "body", "listener")

    def __init__(self, method, host, path, query, headers, body, listener):
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.listener = listener

    def json(self):
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise HttpError(400, "BadParameter", "The request body is not valid JSON.")


class Response:
    __slots__ = ("status", "headers", "body", "action", "hold")

    def __init__(self, status=200, body=b"", headers=None, action=None, hold=0.0):
        self.status = status
        self.body = body
        self.headers = headers or []
        self.action = action     # None, "reset" or "hang"
        self.hold = hold


def json_response(status, obj, headers=None):
    h = [("Content-Type", JSON_CT)]
    if headers:
        h.extend(headers)
    return Response(status, jdump(obj), h)
