#!/usr/bin/python3
"""Hostile and malformed answers from the vault and the identity endpoint
(docs/errors.md, "Malformed answers"): wrong JSON types where the REST API
has arrays, objects or strings, missing fields, absurd numbers. Each gives
CKR_DEVICE_ERROR and a log line naming what was wrong, never a crash; the
absurd numbers (dates, expires_in, Retry-After) are clamped and the call
works. Every answer comes from the emulator's "body" fault, through
PyKCS11 and the module."""
import os
import re

from kvtest import (Tap, KvSetup, PyKCS11, find, ckr, unwrap, public_key)

P = PyKCS11
t = Tap()
s = KvSetup()
emu = s.emu
KID = s.vault_url() + "/keys/hk/0123456789abcdef0123456789abcdef"

# One token per case: each starts with nothing loaded and no access token,
# so the faulted request is the one the case is about.
LISTINGS = [  # GET /keys (no keys = list: every name is listed)
    ('{"value":"not-an-array"}', "the listing's value is not an array"),
    ('{"value":{}}', "the listing's value is not an array"),
    ('{"value":7}', "the listing's value is not an array"),
    ('{"nextLink":null}', "the listing has no value array"),
    ('{"value":[1,2]}', "an entry of value is not an object"),
    ('{"value":[{"kid":5}]}', "an entry has no kid string"),
    ('{"value":[{"kid":null}]}', "an entry has no kid string"),
    ('{"value":[],"nextLink":7}', "nextLink is not a string"),
    ('[{"value":[]}]', "the answer is JSON but not an object"),
    ('"value"', "the answer is JSON but not an object"),
    ('{"value":[', "the answer is not JSON"),
    ('not json at all', "the answer is not JSON"),
]
VERSIONS = [  # GET /keys/NAME/versions
    ('{"value":"not-an-array"}', "the listing's value is not an array"),
    ('{"value":{"kid":"%s"}}' % KID, "the listing's value is not an array"),
    ('{"value":[{"kid":"%s","attributes":"on"}]}' % KID,
     "an entry's attributes is not an object"),
    ('{"value":[{"kid":"%s","attributes":{"enabled":"yes"}}]}' % KID,
     "attributes.enabled is not a boolean"),
    ('{"value":[{"kid":"%s","attributes":{"exp":"tomorrow"}}]}' % KID,
     "attributes.exp is not a number"),
    ('{"value":[{"kid":"%s","attributes":{"recoveryLevel":[]}}]}' % KID,
     "attributes.recoveryLevel is not a string"),
]
BUNDLE_KEY = '"kid":"%s","kty":"RSA"' % KID
BUNDLES = [  # GET /keys/NAME/VERSION
    ('{"key":"RSA"}', "the answer has no key object"),
    ('{"key":[]}', "the answer has no key object"),
    ('{"key":{"kid":7,"kty":"RSA"}}', "key.kid is not a key version's identifier"),
    ('{"key":{"kid":"nokeys","kty":"RSA"}}',
     "key.kid is not a key version's identifier"),
    ('{"key":{"kid":"%s","kty":5}}' % KID, "the key has no kty string"),
    ('{"key":{%s,"e":"AQAB"}}' % BUNDLE_KEY, "an RSA key has no key.n string"),
    ('{"key":{%s,"n":5,"e":"AQAB"}}' % BUNDLE_KEY,
     "an RSA key has no key.n string"),
    ('{"key":{%s,"n":"AQAB"}}' % BUNDLE_KEY, "an RSA key has no key.e string"),
    ('{"key":{%s,"n":"!!!","e":"AQAB"}}' % BUNDLE_KEY,
     "key.n is not base64url"),
    ('{"key":{%s,"n":"","e":"AQAB"}}' % BUNDLE_KEY, "key.n is empty"),
    ('{"key":{%s,"n":"AQAB","e":"AQAB","key_ops":"wrapKey"}}' % BUNDLE_KEY,
     "key.key_ops is not an array"),
    ('{"key":{%s,"n":"AQAB","e":"AQAB","key_ops":["wrapKey",1]}}' % BUNDLE_KEY,
     "an entry of key.key_ops is not a string"),
    ('{"key":{%s,"n":"AQAB","e":"AQAB"},"attributes":[]}' % BUNDLE_KEY,
     "attributes is not an object"),
]
TOKENS = [  # the identity endpoint (client secret: login:token)
    ('{"access_token":5,"expires_in":3599}', "the answer has no access_token string"),
    ('{"access_token":{},"expires_in":3599}', "the answer has no access_token string"),
    ('{"access_token":"","expires_in":3599}', "the answer has no access_token string"),
    ('{"token_type":"Bearer"}', "the answer has no access_token string"),
    ('["access_token"]', "the answer is JSON but not an object"),
]
cases = ([("getKeys", b, w) for b, w in LISTINGS] +
         [("getKeyVersions", b, w) for b, w in VERSIONS] +
         [("getKey", b, w) for b, w in BUNDLES] +
         [("login:token", b, w) for b, w in TOKENS])
# Absurd numbers in a token answer: clamped, and the token is used.
LIFETIMES = ['1e300', '-1e300', '-5', '0', '9223372036854775807',
             '"99999999999999999999999"', '1.5', '{}', 'Infinity', 'NaN',
             '-Infinity']
tokens = [("h%d" % i, s.token_body()) for i in range(len(cases))]
tokens += [("life%d" % i, s.token_body()) for i in range(2 * len(LIFETIMES))]
tokens += [("kv", s.token_body(extra="timeout = 2\ndeadline = 4\nretries = 2\n")),
           ("dates", s.token_body()), ("bad", s.token_body()),
           ("oaep", s.token_body())]
s.write_conf(tokens, log_level="error")
s.create_key("hk")
s.create_key("junk")
s.load()
log_seen = 0


def new_log():
    """The log lines written since the last call."""
    global log_seen
    text = s.log_text()
    new = text[log_seen:]
    log_seen = len(text)
    return new


def body_fault(match, body, **kw):
    spec = {"kind": "body", "match": match, "body": body}
    spec.update(kw)
    emu.admin("POST", "faults", spec)


def search(tok, label=None):
    ses = s.session(tok)
    tmpl = [(P.CKA_CLASS, P.CKO_PRIVATE_KEY)]
    if label is not None:
        tmpl.append((P.CKA_LABEL, label))
    try:
        return 0, ses.findObjects(tmpl)
    except P.PyKCS11Error as e:
        return e.value, []


for i, (route, body, why) in enumerate(cases):
    body_fault(route if ":" in route else "kvemu:" + route, body)
    rv, _ = search("h%d" % i, None if route == "getKeys" else "hk")
    line = new_log()
    left = emu.admin("GET", "faults")["faults"]
    t.ok(rv == P.CKR_DEVICE_ERROR and "malformed answer" in line and why in line
         and not left, "%s answers %s: CKR_DEVICE_ERROR, logged: %s" %
         (route, body, why), "rv=%r faults left=%r log=%r" % (rv, left, line))
    emu.admin("DELETE", "faults")
    rv, objs = search("h%d" % i, None if route == "getKeys" else "hk")
    t.ok(rv == 0 and len(objs) >= 1, "%s: the next search works" % route,
         "rv=%r objects=%d" % (rv, len(objs)))

# Base64url that is no RSA public key.
res = "https://vault.localhost:%d" % emu.port
st, _, bundle = emu.vault("GET", "/keys/junk")
n = bundle["key"]["n"]
for field, value, why in [("n", "AAAA", "key.n is not an RSA modulus"),
                          ("n", n[:-4] + "AAAA", "key.n is not an RSA modulus"),
                          ("n", n * 9, "key.n is not an RSA modulus"),
                          ("e", "AA", "key.e is not an RSA public exponent"),
                          ("e", "AQAAAAAAAAAB", "key.e is not an RSA public exponent")]:
    b = __import__("copy").deepcopy(bundle)
    b["key"][field] = value
    body_fault("kvemu:getKey", b)
    rv, objs = search("bad", "junk")
    line = new_log()
    t.ok(rv == P.CKR_DEVICE_ERROR and why in line,
         "key.%s %s...: CKR_DEVICE_ERROR, logged: %s" % (field, value[:8], why),
         "rv=%r log=%r" % (rv, line))

# Absurd dates: clamped into 1970 .. 9999-12-31.
st, _, listing = emu.vault("GET", "/keys/hk/versions")
for item in listing["value"]:
    item["attributes"].update({"exp": 1e300, "nbf": -1e300,
                               "created": 9.3e18, "updated": -5})
raw = re.sub(r'"created": [0-9.e+]+', '"created": NaN',
             __import__("json").dumps(listing))
body_fault("kvemu:getKeyVersions", raw)
st, _, bundle = emu.vault("GET", "/keys/hk")
bundle["attributes"].update({"exp": 1e300, "nbf": -1e300, "created": 9.3e18,
                             "updated": -5})
body_fault("kvemu:getKey", bundle)
rv, objs = search("dates", "hk")
t.eq((rv, len(objs)), (0, 1), "absurd dates in the listing: the key is there")
if objs:
    ses = s.session("dates")
    end, start = ses.getAttributeValue(objs[0], [P.CKA_END_DATE, P.CKA_START_DATE])
    t.eq((bytes(end), bytes(start)), (b"99991231", b""),
         "exp 1e300 is 9999-12-31; a negative nbf is none")

for i, life in enumerate(LIFETIMES):
    for j, field in enumerate(("expires_in", "expires_on")):
        tok = "life%d" % (2 * i + j)
        body_fault("login:token", '{"access_token":"%s","token_type":"Bearer",'
                   '"%s":%s}' % (emu.token("app", res), field, life))
        rv, objs = search(tok, "hk")
        t.ok(rv == 0 and len(objs) == 1, "%s %s: the token is used" % (field, life),
             "rv=%r log=%r" % (rv, new_log()))

# Operation results.
ses = s.session("kv")
priv = find(ses, P.CKO_PRIVATE_KEY, "hk")[0]
pk = public_key(ses, find(ses, P.CKO_PUBLIC_KEY, "hk")[0])
for body, why in [('{"kid":"%s"}' % KID, "the answer has no value string"),
                  ('{"value":5}', "the answer has no value string"),
                  ('{"value":["AAAA"]}', "the answer has no value string"),
                  ('{"value":"%%%"}', "the answer's value is not base64url"),
                  ('{"value":', "the answer is not JSON")]:
    new_log()
    body_fault("kvemu:unwrapKey", body)
    rv = unwrap(ses, priv, pk)
    line = new_log()
    t.ok(rv == P.CKR_DEVICE_ERROR and why in line,
         "unwrapKey answers %s: CKR_DEVICE_ERROR, logged: %s" % (body, why),
         "rv=%r log=%r" % (rv, line))
t.eq(unwrap(ses, priv, pk), 0, "the next unwrap works")

# Retry-After: absurd values are clamped, never overflow.
for ra, want in [("99999999999999999999999", P.CKR_DEVICE_ERROR),
                 ("18446744073709551617", P.CKR_DEVICE_ERROR),
                 ("-5", 0), ("1e400", 0), ("0.5", 0), ("soon", 0)]:
    emu.admin("POST", "faults", {"kind": "429", "match": "kvemu:unwrapKey",
                                 "retry_after": ra})
    rv = unwrap(ses, priv, pk)
    emu.admin("DELETE", "faults")
    t.eq(rv, want, "429 with Retry-After: %s: %s" % (
        ra, "past the deadline, no wait" if want else "retried"))
t.ok(os.path.exists(s.conf), "the process is alive after every answer")
