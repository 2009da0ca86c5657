"""Resolve "localhost" and every "*.localhost" name to loopback in Python clients.

libcurl does this by itself; Python's resolver asks the system, which usually
knows only "localhost".  Call install() before making requests, or put
tests/kvemu/pyshim on PYTHONPATH to have it installed for every interpreter
(through its sitecustomize module).
"""
import socket

_orig_getaddrinfo = socket.getaddrinfo
_installed = False


def _is_local(host):
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    h = host.rstrip(".").lower()
    return h == "localhost" or h.endswith(".localhost")


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    if _is_local(host):
        out = []
        if family in (0, socket.AF_INET):
            out += _orig_getaddrinfo("127.0.0.1", port, socket.AF_INET, type, proto, flags)
        if family == socket.AF_INET6:
            out += _orig_getaddrinfo("::1", port, socket.AF_INET6, type, proto, flags)
        return out
    return _orig_getaddrinfo(host, port, family, type, proto, flags)


def install():
    global _installed
    if not _installed:
        socket.getaddrinfo = _getaddrinfo
        _installed = True


def uninstall():
    global _installed
    socket.getaddrinfo = _orig_getaddrinfo
    _installed = False
