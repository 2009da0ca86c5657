/*
 * cmkp11-tool check [TOKEN [KEY]]: the prerequisites of a customer-managed
 * key, one row each, PASS or FAIL with the remedy in words. A few rows
 * (the rotation policy, an expiry within 30 days) only warn (WARN): the key
 * still passes, unless --strict.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "keys.h"
#include "out.h"
#include "rotpolicy.h"
#include "tool.h"

#define DEFAULT_MIN_BITS 2048
#define MAX_ROWS         14
#define EXPIRY_WARN_DAYS 30

struct row {
    const char *name;  /* stable name, in the JSON */
    const char *title; /* in the text table */
    bool pass;
    bool warn; /* pass is true: a warning, a failure with --strict */
    char detail[512];
    char remedy[512];
};

struct result {
    const char *token;
    const char *key; /* NULL when the token could not be read */
    const char *version;
    struct row rows[MAX_ROWS];
    size_t n;
    bool strict; /* --strict: a warning fails the key */
};

static struct row *add_row(struct result *r, const char *name,
                           const char *title)
{
    struct row *w = &r->rows[r->n++];

    memset(w, 0, sizeof(*w));
    w->name = name;
    w->title = title;
    w->pass = true;
    return w;
}

static bool result_pass(const struct result *r)
{
    size_t i;

    for (i = 0; i < r->n; i++)
        if (!r->rows[i].pass || (r->rows[i].warn && r->strict))
            return false;
    return r->n > 0;
}

static const char *row_result(const struct row *w)
{
    return !w->pass ? "FAIL" : w->warn ? "WARN" : "PASS";
}

/* ---- the checks ---------------------------------------------------------- */

static void check_type(struct result *r, const struct tversion *v,
                       const struct tool_opts *o, bool keyvault)
{
    struct row *w = add_row(r, "key-type", "key type and size");
    long min = o->min_key_bits ? o->min_key_bits
               : v->min_bits   ? (long)v->min_bits
                               : DEFAULT_MIN_BITS;
    const char *type = v->key_type ? v->key_type : "unknown";
    bool type_ok = strcmp(type, "RSA") == 0 || strcmp(type, "RSA-HSM") == 0;

    w->pass = type_ok && (long)v->bits >= min;
    snprintf(w->detail, sizeof(w->detail), "%s, %lu bits (minimum %ld)", type,
             v->bits, min);
    if (w->pass)
        return;
    if (keyvault)
        snprintf(w->remedy, sizeof(w->remedy),
                 "create an RSA or RSA-HSM key of %ld bits or more in the "
                 "vault (a new key, or a new version created with that size) "
                 "and use it",
                 min);
    else
        snprintf(w->remedy, sizeof(w->remedy),
                 "generate an RSA key pair of %ld bits or more in the token "
                 "and use it",
                 min);
}

static void check_ops(struct result *r, const struct tversion *v, bool keyvault)
{
    struct row *w = add_row(r, "key-ops", "permitted operations");
    bool wrap = tops_has(v->key_ops, "wrapKey");
    bool unwrap = tops_has(v->key_ops, "unwrapKey");

    w->pass = wrap && unwrap && !v->state_unknown;
    if (v->state_unknown)
        snprintf(w->detail, sizeof(w->detail),
                 "not known: the private key is hidden until a login");
    else if (w->pass)
        snprintf(w->detail, sizeof(w->detail), "wrapKey and unwrapKey (%s)",
                 v->key_ops);
    else
        snprintf(w->detail, sizeof(w->detail), "%s%s%s not permitted (%s)",
                 wrap ? "" : "wrapKey", !wrap && !unwrap ? " and " : "",
                 unwrap ? "" : "unwrapKey",
                 v->key_ops && *v->key_ops ? v->key_ops : "none");
    if (w->pass)
        return;
    if (v->state_unknown)
        snprintf(w->remedy, sizeof(w->remedy),
                 "give the token's PIN with --pin or --pin-file");
    else if (keyvault)
        snprintf(w->remedy, sizeof(w->remedy),
                 "permit wrapKey and unwrapKey on the key (az keyvault key "
                 "set-attributes --ops wrapKey unwrapKey ...)");
    else
        snprintf(w->remedy, sizeof(w->remedy),
                 "set CKA_UNWRAP on the private key and CKA_WRAP on the "
                 "public key in the lower token, or generate a new version "
                 "that permits them");
}

static void check_enabled(struct result *r, const struct tversion *v,
                          bool keyvault)
{
    struct row *w = add_row(r, "enabled", "enabled and inside nbf/exp");
    long long now = (long long)time(NULL);
    long long nbf = out_epoch(v->not_before), exp = out_epoch(v->expires);
    char a[32], b[32];

    out_time(v->not_before, a, sizeof(a));
    out_time(v->expires, b, sizeof(b));
    if (v->state_unknown) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail),
                 "not known: the private key is hidden until a login");
        snprintf(w->remedy, sizeof(w->remedy),
                 "give the token's PIN with --pin or --pin-file");
    } else if (!v->enabled) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "version %s is disabled",
                 v->version ? v->version : "?");
        snprintf(w->remedy, sizeof(w->remedy), "%s",
                 keyvault ? "enable the key version (az keyvault key "
                            "set-attributes --enabled true), or rotate to a "
                            "new version"
                          : "set CKA_UNWRAP and CKA_DECRYPT on the version's "
                            "private key in the lower token, or rotate to a "
                            "new version");
    } else if (nbf > 0 && now < nbf) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "not valid before %s", a);
        snprintf(w->remedy, sizeof(w->remedy),
                 "wait until %s, or move the key's activation date (nbf) "
                 "earlier",
                 a);
    } else if (exp > 0 && now >= exp) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "expired at %s", b);
        snprintf(w->remedy, sizeof(w->remedy),
                 "move the key's expiry date (exp) later, or rotate to a new "
                 "version");
    } else {
        snprintf(w->detail, sizeof(w->detail), "enabled; %s%s%s%s%s",
                 nbf > 0 ? "valid from " : "", nbf > 0 ? a : "",
                 nbf > 0 && exp > 0 ? ", " : "", exp > 0 ? "expires " : "",
                 exp > 0 ? b : "");
        if (nbf == 0 && exp == 0)
            snprintf(w->detail, sizeof(w->detail),
                     "enabled; no activation or expiry date");
    }
}

/* A recoveryLevel with soft delete and purge protection. */
static bool recovery_good(const char *level)
{
    static const char *const good[] = {
        "Recoverable",
        "Recoverable+ProtectedSubscription",
        "CustomizedRecoverable",
        "CustomizedRecoverable+ProtectedSubscription",
    };
    size_t i;

    for (i = 0; level != NULL && i < CMK_ARRAY_SIZE(good); i++)
        if (strcmp(level, good[i]) == 0)
            return true;
    return false;
}

static void check_recovery(struct result *r, const struct tversion *v)
{
    struct row *w = add_row(r, "recovery", "soft delete and purge protection");
    const char *level = v->recovery && *v->recovery ? v->recovery : NULL;

    w->pass = recovery_good(level);
    snprintf(w->detail, sizeof(w->detail), "recoveryLevel %s",
             level ? level : "unknown");
    if (w->pass)
        return;
    if (level != NULL && strncmp(level, "Purgeable", 9) != 0 &&
        strstr(level, "Recoverable") != NULL)
        snprintf(w->remedy, sizeof(w->remedy),
                 "enable purge protection on the vault (az keyvault update "
                 "--enable-purge-protection true)");
    else
        snprintf(w->remedy, sizeof(w->remedy),
                 "enable soft delete and purge protection on the vault (az "
                 "keyvault update --enable-soft-delete true "
                 "--enable-purge-protection true)");
}

/*
 * With replicas (vault-url lists several vaults): each one reachable,
 * answering this identity, holding this version's public key, and with
 * soft delete and purge protection. The detail names every replica that
 * fails and why.
 */
static void check_replicas(struct result *r, const struct tversion *v)
{
    struct row *w;
    struct treplica rp;
    size_t i, len = 0, n = 0, bad = 0;

    if (v->replicas == NULL || v->replicas[0] == '\0')
        return;
    w = add_row(r, "replicas", "every replica holds the key");
    for (i = 0; tversion_replica(v, i, &rp); i++) {
        char why[256] = "";
        n++;
        if (strcmp(rp.state, "healthy") != 0)
            snprintf(why, sizeof(why), "%s (%s)", rp.state,
                     rp.error[0] ? rp.error : "not asked yet");
        else if (strncmp(rp.error, "HTTP 401", 8) == 0 ||
                 strncmp(rp.error, "HTTP 403", 8) == 0)
            snprintf(why, sizeof(why), "refused the identity (%s)", rp.error);
        else if (strcmp(rp.match, "same") != 0)
            snprintf(why, sizeof(why),
                     "%s: no version with this public key (not merged)",
                     strcmp(rp.match, "differs") == 0 ? "public key differs"
                                                      : "key not read");
        else if (!recovery_good(rp.recovery))
            snprintf(why, sizeof(why),
                     "recoveryLevel %s: soft delete and purge protection "
                     "needed",
                     rp.recovery[0] ? rp.recovery : "unknown");
        if (why[0] == '\0')
            continue;
        bad++;
        if (len < sizeof(w->detail))
            len +=
                (size_t)snprintf(w->detail + len, sizeof(w->detail) - len,
                                 "%s%s: %s", bad > 1 ? "; " : "", rp.url, why);
    }
    w->pass = bad == 0;
    if (w->pass) {
        snprintf(w->detail, sizeof(w->detail),
                 "%zu vaults reachable, the same public key, soft delete and "
                 "purge protection in each",
                 n);
        return;
    }
    snprintf(w->remedy, sizeof(w->remedy),
             "make each replica a copy of the key (az keyvault key backup, "
             "then az keyvault key restore into the replica), grant the "
             "identity the same permissions there, enable soft delete and "
             "purge protection, or remove the replica from vault-url");
}

/* The remedy for a vault that refused, by HTTP status. */
static void vault_remedy(char *buf, size_t len, CK_ULONG status)
{
    if (status == 401)
        snprintf(buf, len,
                 "check the credentials in the module's configuration (tenant "
                 "id, client id, client secret, certificate or federated "
                 "token)");
    else if (status == 403)
        snprintf(buf, len,
                 "grant the identity Get, Wrap Key and Unwrap Key on the key "
                 "(role Key Vault Crypto Service Encryption User, or an "
                 "access policy with get, wrapKey and unwrapKey; list is "
                 "optional); the module's log names the permission the "
                 "vault refused");
    else
        snprintf(buf, len,
                 "make the vault and the identity endpoint reachable (check "
                 "vault-url, authority-host, the network and proxies) and see "
                 "the module's log");
}

/* What the round trip did. */
struct trip {
    const char *step; /* the call that failed, or NULL */
    CK_RV rv;
    CK_ULONG dev;
};

static CK_RV gcm_agrees(struct tmod *m, CK_SESSION_HANDLE s,
                        CK_OBJECT_HANDLE k1, CK_OBJECT_HANDLE k2, bool *same)
{
    unsigned char iv[12], plain[48], ct[48 + 16], back[48 + 16];
    static const char aad[] = "cmkp11-tool check";
    CK_GCM_PARAMS gp;
    CK_MECHANISM mech = {CKM_AES_GCM, &gp, sizeof(gp)};
    CK_ULONG ctlen = sizeof(ct), blen = sizeof(back);
    CK_RV rv;

    *same = false;
    if (RAND_bytes(iv, sizeof(iv)) != 1 ||
        RAND_bytes(plain, sizeof(plain)) != 1)
        return CKR_FUNCTION_FAILED;
    memset(&gp, 0, sizeof(gp));
    gp.pIv = iv;
    gp.ulIvLen = sizeof(iv);
    gp.ulIvBits = sizeof(iv) * 8;
    gp.pAAD = (CK_BYTE *)aad;
    gp.ulAADLen = sizeof(aad) - 1;
    gp.ulTagBits = 128;
    rv = m->f->C_EncryptInit(s, &mech, k1);
    if (rv == CKR_OK)
        rv = m->f->C_Encrypt(s, plain, sizeof(plain), ct, &ctlen);
    if (rv != CKR_OK)
        return rv;
    rv = m->f->C_DecryptInit(s, &mech, k2);
    if (rv == CKR_OK)
        rv = m->f->C_Decrypt(s, ct, ctlen, back, &blen);
    if (rv == CKR_OK)
        *same = blen == sizeof(plain) && memcmp(back, plain, blen) == 0;
    else if (rv == CKR_ENCRYPTED_DATA_INVALID)
        rv = CKR_OK; /* the tag did not verify: not the same key */
    return rv;
}

static void round_trip(struct tmod *m, CK_SESSION_HANDLE s,
                       const struct tversion *v, struct trip *t, bool *same)
{
    CK_OBJECT_CLASS sk = CKO_SECRET_KEY;
    CK_KEY_TYPE aes = CKK_AES;
    CK_ULONG vlen = 32;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE gen[] = {
        {CKA_CLASS, &sk, sizeof(sk)},
        {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &no, sizeof(no)},
        {CKA_VALUE_LEN, &vlen, sizeof(vlen)},
        {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &yes, sizeof(yes)},
    };
    CK_ATTRIBUTE unw[] = {
        {CKA_CLASS, &sk, sizeof(sk)},       {CKA_KEY_TYPE, &aes, sizeof(aes)},
        {CKA_TOKEN, &no, sizeof(no)},       {CKA_ENCRYPT, &yes, sizeof(yes)},
        {CKA_DECRYPT, &yes, sizeof(yes)},   {CKA_SENSITIVE, &yes, sizeof(yes)},
        {CKA_EXTRACTABLE, &no, sizeof(no)},
    };
    CK_MECHANISM kgen = {CKM_AES_KEY_GEN, NULL, 0};
    CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256,
                                    CKZ_DATA_SPECIFIED, NULL, 0};
    CK_MECHANISM mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof(oaep)};
    CK_OBJECT_HANDLE k1 = 0, k2 = 0;
    unsigned char wrapped[2048];
    CK_ULONG wlen = sizeof(wrapped);

    memset(t, 0, sizeof(*t));
    *same = false;
    t->rv = m->f->C_GenerateKey(s, &kgen, gen, CMK_ARRAY_SIZE(gen), &k1);
    if (t->rv != CKR_OK) {
        t->step = "C_GenerateKey (AES-256 session key)";
        goto out;
    }
    t->rv = m->f->C_WrapKey(s, &mech, v->pub, k1, wrapped, &wlen);
    if (t->rv != CKR_OK) {
        t->step = "C_WrapKey (RSA-OAEP SHA-256, public key)";
        goto out;
    }
    t->rv = m->f->C_UnwrapKey(s, &mech, v->priv, wrapped, wlen, unw,
                              CMK_ARRAY_SIZE(unw), &k2);
    if (t->rv != CKR_OK) {
        t->step = "C_UnwrapKey (RSA-OAEP SHA-256, private key)";
        goto out;
    }
    t->rv = gcm_agrees(m, s, k1, k2, same);
    if (t->rv != CKR_OK)
        t->step = "AES-GCM with the unwrapped key";
out:
    if (t->step != NULL)
        t->dev = tmod_device_error(m, s);
    if (k1 != 0)
        m->f->C_DestroyObject(s, k1);
    if (k2 != 0)
        m->f->C_DestroyObject(s, k2);
}

/*
 * What an identity with only get, wrapKey and unwrapKey (the three every
 * CMK document grants) goes without: a row that passes and says so, shown
 * only when the vault refused a permission.
 */
static void check_optional(struct result *r, const struct tversion *v)
{
    struct row *w;

    if (v->refused == NULL || !tops_has(v->refused, "list"))
        return;
    w = add_row(r, "optional", "optional features");
    snprintf(w->detail, sizeof(w->detail),
             "off without the keys list permission: listing the vault's "
             "keys (name them in keys =), listing a key's versions (an "
             "older version is read when a sealed file or NAME@VERSION "
             "names it) and unwrap-fallback over all versions; rotate needs "
             "the keys rotate permission (not tried); grant keys list (or "
             "Microsoft.KeyVault/vaults/keys/read) to turn them on");
}

/*
 * Warnings: whether the key has a rotation policy that rotates it (Azure
 * Policy audits Key Vault keys for one; on hsm tokens `rotate --if-due`
 * acts on it), and whether the version expires within 30 days. On hsm,
 * where versions carry no expiry date, the expiry is the creation day plus
 * the policy's expire-after.
 */
static void check_rotation(struct tmod *m, struct ttoken *t,
                           const struct tkey *key, const struct tversion *v,
                           struct result *r)
{
    struct row *pw = add_row(r, "rotation-policy", "has a rotation policy");
    struct row *ew = add_row(r, "expiry", "expires within 30 days");
    struct rotpolicy p;
    long long now = (long long)time(NULL), exp = out_epoch(v->expires);
    long long created = out_epoch(v->created);
    char text[4 * (ROTPOLICY_DUR_MAX + 24)], rvt[128], when[32], epoch[24];
    bool have = false;
    CK_RV rv;

    memset(&p, 0, sizeof(p));
    if (v->priv == 0) {
        pw->warn = true;
        snprintf(pw->detail, sizeof(pw->detail),
                 "not known: the private key is hidden until a login");
        snprintf(pw->remedy, sizeof(pw->remedy),
                 "give the token's PIN with --pin or --pin-file");
    } else if ((rv = tool_read_policy(m, t->sess, v->priv, &p)) != CKR_OK) {
        pw->warn = true;
        snprintf(pw->detail, sizeof(pw->detail), "not known: %s",
                 tool_rv_text(t, rv, tmod_device_error(m, t->sess), rvt,
                              sizeof(rvt)));
        snprintf(pw->remedy, sizeof(pw->remedy),
                 "see the module's log for what the back end answered");
    } else if (t->keyvault && rotpolicy_empty(&p) &&
               tool_policy_refused(m, t->sess, v->priv)) {
        pw->warn = true;
        snprintf(pw->detail, sizeof(pw->detail),
                 "not known: the vault refused the keys getrotationpolicy "
                 "permission");
        snprintf(pw->remedy, sizeof(pw->remedy),
                 "grant the identity getrotationpolicy (access policy) or "
                 "Microsoft.KeyVault/vaults/keys/rotationpolicy/read (RBAC) "
                 "to check it; the module's log quotes the vault");
    } else if (*p.rotate_after == '\0' && *p.rotate_before == '\0') {
        rotpolicy_format(&p, text, sizeof(text));
        pw->warn = true;
        snprintf(pw->detail, sizeof(pw->detail), "%s%s",
                 rotpolicy_empty(&p) ? "no rotation policy"
                                     : "no Rotate action: ",
                 rotpolicy_empty(&p) ? "" : text);
        snprintf(pw->remedy, sizeof(pw->remedy),
                 "cmkp11-tool rotation-policy set '%s' '%s' --rotate-after "
                 "P90D --expire-after P1Y%s",
                 t->label, key->name,
                 t->keyvault ? ""
                             : "; run cmkp11-tool rotate --if-due "
                               "from a timer (cmkp11-tool(1))");
    } else {
        have = true;
        rotpolicy_format(&p, text, sizeof(text));
        snprintf(pw->detail, sizeof(pw->detail), "%s%s", text,
                 t->keyvault ? " (Key Vault rotates by it)"
                             : " (cmkp11-tool rotate --if-due rotates by "
                               "it)");
    }
    if (exp == 0 && !t->keyvault && created > 0 && *p.expire_after != '\0')
        exp = created + rotpolicy_seconds(p.expire_after);
    snprintf(epoch, sizeof(epoch), "%lld", exp);
    out_time(epoch, when, sizeof(when));
    if (exp == 0) {
        snprintf(ew->detail, sizeof(ew->detail), "no expiry date");
    } else if (exp - now > EXPIRY_WARN_DAYS * 86400LL) {
        snprintf(ew->detail, sizeof(ew->detail),
                 "no: expires %s, in %lld "
                 "days",
                 when, (exp - now) / 86400);
    } else {
        ew->warn = true;
        if (exp <= now)
            snprintf(ew->detail, sizeof(ew->detail), "expired %s", when);
        else
            snprintf(ew->detail, sizeof(ew->detail),
                     "yes: expires %s, in %lld days", when,
                     (exp - now) / 86400);
        snprintf(ew->remedy, sizeof(ew->remedy),
                 "rotate the key (cmkp11-tool rotate '%s' '%s')%s", t->label,
                 key->name,
                 have && t->keyvault
                     ? ", or let the vault rotate it as its policy says"
                     : ", or move its expiry date later");
    }
}

/* Credentials, from the login and the listing (before any key). */
static void credentials_row(struct result *r, const struct ttoken *t,
                            CK_RV list_rv, CK_ULONG list_dev)
{
    struct row *w = add_row(r, "credentials", "credentials obtain a token");
    char text[128];

    if (t->pin_missing) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail),
                 "the token requires a login and no PIN was given");
        snprintf(w->remedy, sizeof(w->remedy),
                 "give the token's user PIN with --pin or --pin-file");
    } else if (t->login_rv != CKR_OK) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "C_Login: %s",
                 tool_rv_text(t, t->login_rv, 0, text, sizeof(text)));
        snprintf(w->remedy, sizeof(w->remedy),
                 "give the token's user PIN (--pin or --pin-file); check "
                 "that the user PIN is initialised and not locked");
    } else if (list_rv != CKR_OK) {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "listing the keys: %s",
                 tool_rv_text(t, list_rv, list_dev, text, sizeof(text)));
        if (t->keyvault)
            vault_remedy(w->remedy, sizeof(w->remedy), list_dev);
        else
            snprintf(w->remedy, sizeof(w->remedy),
                     "check the lower token (module, token-label and "
                     "pin-file in the configuration) and see the module's "
                     "log");
    } else if (t->keyvault) {
        snprintf(w->detail, sizeof(w->detail),
                 "a token was obtained and the vault listed the keys");
    } else {
        snprintf(w->detail, sizeof(w->detail), "%s",
                 t->logged_in ? "logged in to the token"
                              : "the token needs no login");
    }
}

/*
 * A keyvault token's secret key files (docs/keyvault.md, "Token secret
 * keys"): CKA_CMK_STATE_FILES makes the module read the state directory
 * and check the MAC of every key it lists (their first use: an unwrap
 * through the vault each), then names each file it skipped and why. No
 * row where the module does not give it (an hsm token).
 */
static void check_state_files(struct tmod *m, const struct ttoken *t,
                              const struct tversion *v, struct result *r)
{
    char *text, *line, *tab, *next, *end, *slash, list[512] = "";
    char dirwhy[256] = "";
    const char *dir = "";
    int dirlen = 0;
    struct row *w;
    size_t len = 0, n = 0;

    if (!t->keyvault || v->priv == 0)
        return;
    text = tattr_string(m, t->sess, v->priv, CKA_CMK_STATE_FILES);
    if (text == NULL)
        return;
    w = add_row(r, "state-files", "token secret key files");
    /* Lines "DIR/ID.json\tWHY", the directory once, then each file; or
     * "DIR\tWHY" when the directory itself was not read. */
    for (line = text; *line != '\0'; line = next) {
        end = line + strcspn(line, "\n");
        next = *end ? end + 1 : end;
        tab = memchr(line, '\t', (size_t)(end - line));
        if (tab == NULL)
            continue;
        if (tab - line < 5 || memcmp(tab - 5, ".json", 5) != 0) {
            snprintf(dirwhy, sizeof(dirwhy),
                     "the state directory %.*s is not read: %.*s",
                     (int)(tab - line), line, (int)(end - tab - 1), tab + 1);
            continue;
        }
        slash = memrchr(line, '/', (size_t)(tab - line));
        if (slash == NULL)
            continue;
        dir = line;
        dirlen = (int)(slash - line);
        n++;
        if (len < sizeof(list))
            len += (size_t)snprintf(list + len, sizeof(list) - len,
                                    "%s%.*s (%.*s)", n > 1 ? "; " : "",
                                    (int)(tab - slash - 1), slash + 1,
                                    (int)(end - tab - 1), tab + 1);
    }
    if (dirwhy[0] != '\0') {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "%s", dirwhy);
        snprintf(w->remedy, sizeof(w->remedy),
                 "make the state directory (state-dir) a directory of the "
                 "module's user that group and others may not write (chmod "
                 "0700), readable by that user");
    } else if (n == 0) {
        snprintf(w->detail, sizeof(w->detail),
                 "no file of the state directory skipped");
    } else {
        w->pass = false;
        snprintf(w->detail, sizeof(w->detail), "%zu file%s of %.*s skipped: %s",
                 n, n > 1 ? "s" : "", dirlen, dir, list);
        snprintf(w->remedy, sizeof(w->remedy),
                 "restore each file named from a backup, or remove it (its "
                 "key is lost unless a copy of the file or of the key "
                 "exists); keep the state directory writable by the module's "
                 "user only");
    }
    free(text); /* dir points into it */
}

/* Runs the checks on one version. */
static void check_version(struct tmod *m, const struct tool_opts *o,
                          struct ttoken *t, struct tkey *key,
                          struct tversion *v, struct result *r)
{
    struct row *cred, *trip_row;
    struct trip trip;
    bool same = false, prior_ok, access_denied;
    char text[128];
    size_t i, before;

    r->key = key->name;
    r->version = v->version;
    check_type(r, v, o, t->keyvault);
    check_ops(r, v, t->keyvault);
    check_enabled(r, v, t->keyvault);
    if (t->keyvault)
        check_recovery(r, v);
    if (t->keyvault)
        check_replicas(r, v);
    if (t->keyvault)
        check_optional(r, v);
    check_rotation(m, t, key, v, r);
    before = r->n;
    credentials_row(r, t, CKR_OK, 0);
    cred = &r->rows[before];
    trip_row = add_row(r, "round-trip", "wrap and unwrap round trip");

    prior_ok = true;
    for (i = 0; i < before; i++)
        if (strcmp(r->rows[i].name, "recovery") != 0 && !r->rows[i].pass)
            prior_ok = false;
    if (v->priv == 0 || v->pub == 0) {
        trip_row->pass = false;
        snprintf(trip_row->detail, sizeof(trip_row->detail),
                 "the %s key of version %s is not visible",
                 v->priv == 0 ? "private" : "public",
                 v->version ? v->version : "?");
        snprintf(trip_row->remedy, sizeof(trip_row->remedy),
                 "give the token's user PIN with --pin or --pin-file");
        return;
    }
    round_trip(m, t->sess, v, &trip, &same);
    if (trip.step == NULL && same) {
        snprintf(trip_row->detail, sizeof(trip_row->detail),
                 "an AES-256 key wrapped with RSA-OAEP SHA-256 unwraps to "
                 "the same key (AES-GCM agrees)");
        return;
    }
    trip_row->pass = false;
    if (trip.step == NULL)
        snprintf(trip_row->detail, sizeof(trip_row->detail),
                 "the unwrapped key differs from the wrapped one");
    else
        snprintf(trip_row->detail, sizeof(trip_row->detail), "%s: %s",
                 trip.step,
                 tool_rv_text(t, trip.rv, trip.dev, text, sizeof(text)));
    /* A vault that refuses an enabled key with the operations permitted
     * refuses the identity: the credentials row says what to grant. */
    access_denied = t->keyvault && prior_ok && trip.step != NULL &&
                    (trip.dev == 401 || trip.dev == 403);
    if (access_denied) {
        cred->pass = false;
        snprintf(cred->detail, sizeof(cred->detail), "%s for key %s: HTTP %lu",
                 trip.dev == 401 ? "the vault refused the credentials"
                                 : "a token was obtained but the vault "
                                   "denied access",
                 key->name, trip.dev);
        vault_remedy(cred->remedy, sizeof(cred->remedy), trip.dev);
        snprintf(trip_row->remedy, sizeof(trip_row->remedy),
                 "fix the credentials row above");
    } else if (!prior_ok) {
        snprintf(trip_row->remedy, sizeof(trip_row->remedy),
                 "fix the failed rows above");
    } else if (t->keyvault) {
        vault_remedy(trip_row->remedy, sizeof(trip_row->remedy), trip.dev);
    } else if (trip.rv == CKR_MECHANISM_PARAM_INVALID) {
        snprintf(trip_row->remedy, sizeof(trip_row->remedy),
                 "the lower token cannot do RSA-OAEP SHA-256 itself, and "
                 "cmkp11 does it over raw RSA only with CKA_DECRYPT on the "
                 "private key: set CKA_DECRYPT, or use a token that does "
                 "OAEP SHA-256");
    } else {
        snprintf(trip_row->remedy, sizeof(trip_row->remedy),
                 "see the module's log for what the lower token answered");
    }
}

/* ---- output -------------------------------------------------------------- */

static void result_json(struct jw *w, const struct result *r)
{
    size_t i;

    jw_begin_object(w);
    jw_kv_string(w, "token", r->token);
    jw_kv_string(w, "key", r->key);
    jw_kv_string(w, "result", result_pass(r) ? "PASS" : "FAIL");
    jw_key(w, "checks");
    jw_begin_array(w);
    for (i = 0; i < r->n; i++) {
        jw_begin_object(w);
        jw_kv_string(w, "name", r->rows[i].name);
        jw_kv_string(w, "result", row_result(&r->rows[i]));
        jw_kv_string(w, "detail", r->rows[i].detail);
        jw_kv_string(w, "remedy", r->rows[i].remedy);
        jw_end_object(w);
    }
    jw_end_array(w);
    jw_end_object(w);
}

static void result_text(const struct result *r, bool first)
{
    static const char *const headers[] = {"CHECK", "RESULT", "DETAIL",
                                          "REMEDY"};
    struct table *tab = table_new(4, headers);
    size_t i;

    if (!first)
        putchar('\n');
    printf("Token %s, key %s", r->token, r->key ? r->key : "-");
    if (r->version != NULL)
        printf(", version %s", r->version);
    printf(": %s\n", result_pass(r) ? "PASS" : "FAIL");
    if (tab == NULL)
        return;
    for (i = 0; i < r->n; i++) {
        const char *cells[4] = {r->rows[i].title, row_result(&r->rows[i]),
                                r->rows[i].detail, r->rows[i].remedy};
        table_add(tab, cells);
    }
    table_print(tab, stdout, 2);
    table_free(tab);
}

/* ---- the command --------------------------------------------------------- */

int cmd_check(struct tmod *m, const struct tool_opts *o, int argc, char **argv)
{
    struct tsel tsel, ksel;
    struct ttoken *toks = NULL;
    struct result *res = NULL, *nr;
    struct tkeys *keys = NULL;
    size_t ntok = 0, nres = 0, i, j;
    int status = TOOL_FAILED;
    struct jw w;

    if (argc == 2 && check_is_sealed_path(argv[1]))
        return cmd_check_sealed(m, o, argc, argv);
    memset(&ksel, 0, sizeof(ksel));
    if (tsel_parse(&tsel, argc > 1 ? argv[1] : NULL) < 0)
        return TOOL_USAGE;
    if (argc > 2) {
        if (tsel_parse(&ksel, argv[2]) < 0) {
            tsel_clear(&tsel);
            return TOOL_USAGE;
        }
    } else if (tsel.uri != NULL && tsel_has_object(&tsel)) {
        if (tsel_parse(&ksel, argv[1]) < 0) {
            tsel_clear(&tsel);
            return TOOL_USAGE;
        }
    }
    if (ttokens_find(m, &tsel, &toks, &ntok) < 0)
        goto out;
    if (ntok == 0) {
        tool_error("no token matches '%s'", argc > 1 ? argv[1] : "");
        goto out;
    }
    keys = calloc(ntok, sizeof(*keys));
    if (keys == NULL)
        goto out;
    for (i = 0; i < ntok; i++) {
        struct ttoken *t = &toks[i];
        CK_ULONG dev = 0;
        CK_RV rv;

        if (ksel.uri != NULL && !tsel_match_token(&ksel, &t->info, t->label))
            continue;
        rv = ttoken_open(m, t, &o->pin);
        if (rv != CKR_OK) {
            tool_error("C_OpenSession on token %s: %s", t->label, trv_name(rv));
            continue;
        }
        rv = t->login_rv == CKR_OK || t->pin_missing
                 ? tkeys_load(m, t, &keys[i])
                 : CKR_OK;
        if (rv == CKR_OK && (t->login_rv == CKR_OK || t->pin_missing))
            rv = tkeys_load_named(m, t, &keys[i], &ksel);
        if (rv != CKR_OK)
            dev = tmod_device_error(m, t->sess);
        tkeys_select(&keys[i], &ksel);
        if (rv != CKR_OK || (t->login_rv != CKR_OK && !t->pin_missing)) {
            /* Nothing more can be known about this token's keys. */
            nr = realloc(res, (nres + 1) * sizeof(*res));
            if (nr == NULL)
                goto out;
            res = nr;
            memset(&res[nres], 0, sizeof(*res));
            res[nres].token = t->label;
            res[nres].key = ksel.name;
            credentials_row(&res[nres], t, rv, dev);
            nres++;
            continue;
        }
        for (j = 0; j < keys[i].n; j++) {
            struct tversion *v = tkey_selected(&keys[i].k[j]);
            if (v == NULL)
                continue;
            nr = realloc(res, (nres + 1) * sizeof(*res));
            if (nr == NULL)
                goto out;
            res = nr;
            memset(&res[nres], 0, sizeof(*res));
            res[nres].token = t->label;
            res[nres].strict = o->strict;
            check_version(m, o, t, &keys[i].k[j], v, &res[nres]);
            check_state_files(m, t, v, &res[nres]);
            nres++;
        }
    }
    if (nres == 0) {
        if (argc > 2)
            tool_error("no key matches '%s'", argv[2]);
        else
            tool_error("no key to check");
        goto out;
    }
    status = TOOL_OK;
    for (i = 0; i < nres; i++)
        if (!result_pass(&res[i]))
            status = TOOL_FAILED;
    /* One shape for scripts, whatever the number of keys. */
    jw_init(&w, stdout);
    if (o->json) {
        jw_begin_object(&w);
        jw_kv_string(&w, "result", status == TOOL_OK ? "PASS" : "FAIL");
        jw_key(&w, "keys");
        jw_begin_array(&w);
    }
    for (i = 0; i < nres; i++) {
        if (o->json)
            result_json(&w, &res[i]);
        else
            result_text(&res[i], i == 0);
    }
    if (o->json) {
        jw_end_array(&w);
        jw_end_object(&w);
        jw_finish(&w);
    }
out:
    free(res);
    for (i = 0; keys != NULL && i < ntok; i++)
        tkeys_free(&keys[i]);
    free(keys);
    ttokens_free(m, toks, ntok);
    tsel_clear(&tsel);
    tsel_clear(&ksel);
    return status;
}
