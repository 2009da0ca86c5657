#!/usr/bin/python3
"""Measure the emulator's unwrapkey rate (RSA-OAEP-256, 2048-bit) over keep-alive TLS.

  bench-unwrap.py [--seconds S] [--connections N]

Starts its own emulator in a temporary directory, creates one key, then N
threads each keep one HTTPS connection open and POST unwrapkey requests for S
seconds.  Prints requests/s.  Not part of "make check".
"""
import argparse
import base64
import os
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import taplib  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--latency-ms", type=int, default=0, help="inject vault latency")
    args = ap.parse_args()
    emu = taplib.Emu()
    try:
        st, _, body = emu.vault("POST", "/keys/bench/create", {"kty": "RSA", "key_size": 2048})
        n = int.from_bytes(base64.urlsafe_b64decode(body["key"]["n"] + "=="), "big")
        pub = rsa.RSAPublicNumbers(65537, n).public_key()
        kid = body["key"]["kid"]
        ct = pub.encrypt(os.urandom(32), padding.OAEP(padding.MGF1(hashes.SHA256()),
                                                      hashes.SHA256(), None))
        payload = {"alg": "RSA-OAEP-256",
                   "value": base64.urlsafe_b64encode(ct).rstrip(b"=").decode()}
        if args.latency_ms:
            emu.admin("PUT", "latency", {"vault_ms": args.latency_ms})
        token = emu.token("app")
        counts = [0] * args.connections
        errors = [0] * args.connections
        stop = time.time() + args.seconds

        def worker(i):
            own = taplib.Emu.__new__(taplib.Emu)
            own.__dict__.update(emu.__dict__)
            own._conns = {}
            while time.time() < stop:
                s, _, r = own.vault("POST", kid + "/unwrapkey", payload, token=token)
                if s == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1

        th = [threading.Thread(target=worker, args=(i,)) for i in range(args.connections)]
        t0 = time.time()
        for x in th:
            x.start()
        for x in th:
            x.join()
        dt = time.time() - t0
        print("connections=%d seconds=%.1f requests=%d errors=%d rate=%.0f req/s"
              % (args.connections, dt, sum(counts), sum(errors), sum(counts) / dt))
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
