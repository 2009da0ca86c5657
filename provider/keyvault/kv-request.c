/*
 * The keyvault back end's request engine: the 401 challenge, the access
 * token, retries with backoff, each replica's circuit breaker and health,
 * the outage clock, and the messages a refused call leaves.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CMK_DEBUG_FLAG CMK_DEBUG_KEYVAULT
#include "debug.h"
#include "kv-parse.h"
#include "kv-token.h"
#include "secure.h"

/* ---- requests: challenge, token, retries ---- */

__thread bool kv_call_unreachable;
__thread const char *kv_call_host;

/* The length of the token (RFC 9110, section 5.6.2) at p. */
static size_t token_len(const char *p)
{
    size_t n = 0;

    while (p[n] != '\0' && strchr(" \t,=\"", p[n]) == NULL)
        n++;
    return n;
}

/* The parameter value at *pp, a token or a quoted-string whose quoted-pairs
 * are undone (RFC 9110, section 5.6.4): a new string, *pp moved past it;
 * NULL for a quote left open (or no memory). */
static char *param_value(const char **pp)
{
    const char *p = *pp;
    char *out, *o;

    if (*p != '"') {
        size_t n = 0;
        while (p[n] != '\0' && strchr(" \t,", p[n]) == NULL)
            n++;
        *pp = p + n;
        return strndup(p, n);
    }
    out = o = malloc(strlen(p)); /* the value and its NUL, at most */
    if (out == NULL)
        return NULL;
    for (p++; *p != '"'; p++) {
        if (*p == '\\' && p[1] != '\0')
            p++;
        if (*p == '\0') {
            free(out);
            return NULL;
        }
        *o++ = *p;
    }
    *o = '\0';
    *pp = p + 1;
    return out;
}

/* Parses the Bearer challenge of a WWW-Authenticate value (RFC 9110,
 * section 11.6.1: challenges separated by commas, each a scheme and its
 * parameters): resource (or scope) and the tenant. Only the first Bearer
 * challenge's parameters count. A challenge may give scope= alone
 * (https://vault.azure.net/.default): the SDKs take the resource from it
 * then (azure-keyvault-keys, _shared/http_challenge.py, get_resource and
 * get_scope). */
bool kv_parse_challenge(const char *h, char **resource, char **tenant)
{
    char *res = NULL, *auth = NULL, *scope = NULL;
    bool bearer = false, malformed = false;
    const char *p = h;

    if (h == NULL)
        return false;
    while (*p != '\0') {
        const char *name;
        char *val, **slot = NULL;
        size_t n;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        name = p;
        n = token_len(p);
        p += n;
        while (*p == ' ' || *p == '\t')
            p++;
        if (n == 0) {
            malformed = true; /* a quote or '=' where a name belongs */
            break;
        }
        if (*p != '=') { /* a scheme: the next challenge */
            if (bearer)
                break;
            bearer = n == 6 && strncasecmp(name, "Bearer", 6) == 0;
            continue;
        }
        for (p++; *p == ' ' || *p == '\t'; p++)
            ;
        val = param_value(&p);
        if (val == NULL) {
            malformed = true;
            break;
        }
        if (bearer && n == 8 && strncasecmp(name, "resource", 8) == 0)
            slot = &res;
        else if (bearer && n == 5 && strncasecmp(name, "scope", 5) == 0)
            slot = &scope;
        else if (bearer &&
                 ((n == 13 && strncasecmp(name, "authorization", 13) == 0) ||
                  (n == 17 && strncasecmp(name, "authorization_uri", 17) == 0)))
            slot = &auth;
        if (slot != NULL) {
            free(*slot);
            *slot = val;
        } else
            free(val);
    }
    if (malformed) {
        free(res);
        free(scope);
        free(auth);
        return false;
    }
    if (res == NULL && scope != NULL) {
        size_t sl = strlen(scope);
        if (sl > 9 && strcmp(scope + sl - 9, "/.default") == 0)
            scope[sl - 9] = '\0';
        res = scope;
        scope = NULL;
    }
    free(scope);
    if (res == NULL) {
        free(auth);
        return false;
    }
    while (strlen(res) > 0 && res[strlen(res) - 1] == '/')
        res[strlen(res) - 1] = '\0';
    *resource = res;
    *tenant = NULL;
    if (auth != NULL) {
        /* https://login.example/{tenant}[/...] */
        const char *s = strstr(auth, "://");
        s = s ? strchr(s + 3, '/') : NULL;
        if (s != NULL) {
            const char *e = strchr(s + 1, '/');
            *tenant = e ? strndup(s + 1, (size_t)(e - s - 1)) : strdup(s + 1);
        }
        free(auth);
    }
    return true;
}

/* The vault host must lie in the resource's domain, as the SDKs check. */
static bool resource_matches(const char *vault_host, const char *resource)
{
    const char *rh = strstr(resource, "://");
    size_t vl = strlen(vault_host), rl;

    if (rh == NULL)
        return false;
    rh += 3;
    rl = strlen(rh);
    return vl > rl + 1 && strcasecmp(vault_host + vl - rl, rh) == 0 &&
           vault_host[vl - rl - 1] == '.';
}

static bool retriable(const struct kv_response *r)
{
    if (r->curl != CURLE_OK) /* a certificate that failed stays so */
        return !kv_http_tls_failure(r->curl);
    return r->status == 408 || r->status == 429 || r->status == 500 ||
           r->status == 502 || r->status == 503 || r->status == 504;
}

static int64_t backoff_ms(const struct kv_response *r, int n)
{
    if (r->retry_after_ms >= 0)
        return r->retry_after_ms;
    return kv_backoff_ms(r->status == 429 ? 1000 : 800, n);
}

void kv_result_clear(struct kv_result *res)
{
    json_object_put(res->doc);
    memset(res, 0, sizeof(*res));
}

static char *with_api_version(const struct kv_replica *rep, const char *path)
{
    const char *sep;

    if (strncmp(path, "https://", 8) == 0) {
        sep = strchr(path, '?') ? "&" : "?";
        if (strstr(path, "api-version=") != NULL)
            return strdup(path);
        return kv_strdup_printf("%s%sapi-version=%s", path, sep,
                                KV_API_VERSION);
    }
    sep = strchr(path, '?') ? "&" : "?";
    return kv_concat(rep->url, path, sep, "api-version=" KV_API_VERSION, NULL);
}

/* Whether a link the vault sent (nextLink) points at the vault itself. */
bool kv_same_origin(const char *vault_url, const char *url)
{
    CURLU *u = curl_url(), *v = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *vhost = NULL,
         *vport = NULL, *user = NULL, *pass = NULL;
    bool same = false;

    /* libcurl's own parser, the one that would follow the link: an
     * https URL without user information whose host and port (443 when
     * left out) are the vault's. */
    if (u != NULL && v != NULL &&
        curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_set(v, CURLUPART_URL, vault_url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        strcasecmp(scheme, "https") == 0 &&
        curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_NO_USER &&
        curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_NO_PASSWORD &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
        curl_url_get(v, CURLUPART_HOST, &vhost, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) ==
            CURLUE_OK &&
        curl_url_get(v, CURLUPART_PORT, &vport, CURLU_DEFAULT_PORT) ==
            CURLUE_OK)
        same = strcasecmp(host, vhost) == 0 && strcmp(port, vport) == 0;
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(vhost);
    curl_free(vport);
    curl_free(user);
    curl_free(pass);
    curl_url_cleanup(u);
    curl_url_cleanup(v);
    return same;
}

static bool circuit_allows(struct kv_token *kt, struct kv_replica *rep)
{
    int64_t now = kv_now_ms();
    bool ok = true;

    pthread_mutex_lock(&kt->lock);
    rep->asked = true;
    if (rep->failures >= KV_CIRCUIT_FAILURES) {
        if (now < rep->open_until_ms || rep->probing)
            ok = false; /* open: fail fast instead of piling up */
        else
            rep->probing = true; /* half-open: this call probes */
    }
    pthread_mutex_unlock(&kt->lock);
    if (!ok)
        cmk_debug("token %s: circuit of %s open, failing fast", kt->name,
                  rep->host);
    return ok;
}

/* Whether a call to rep would be made now (its breaker closed, or its
 * cool-down over and no probe under way). Under the lock. */
bool kv_rep_available_unlocked(const struct kv_replica *rep, int64_t now)
{
    return rep->failures < KV_CIRCUIT_FAILURES ||
           (now >= rep->open_until_ms && !rep->probing);
}

/*
 * The token's reachability, for offline-grace: unreachable when a call
 * found no vault of vault-url answering (the last replica tried), reached
 * again as soon as any vault answers.
 */
static void token_reach(struct kv_token *kt, bool unavailable)
{
    int64_t now = kv_now_ms();
    const char *what = kt->nrep > 1 ? "every vault of vault-url" : kt->host;

    pthread_mutex_lock(&kt->lock);
    if (!unavailable && kt->offline_since_ms != 0) {
        cmk_warning("token %s: %s is reachable again after %lld s; "
                    "offline-grace ends",
                    kt->name, kt->nrep > 1 ? kv_call_host : kt->host,
                    (long long)(now - kt->offline_since_ms) / 1000);
        kt->offline_since_ms = 0;
    } else if (unavailable && kt->offline_since_ms == 0) {
        kt->offline_since_ms = kt->offline_logged_ms = now;
        cmk_warning("token %s: %s is unreachable; keys loaded within "
                    "refresh-interval + offline-grace (%ld s) keep serving "
                    "local operations and cached unwraps%s%s",
                    kt->name, what, kt->grace_ms / 1000,
                    kt->nrep > 1 ? ": " : "", kt->nrep > 1 ? kt->hosts : "");
    } else if (unavailable &&
               now - kt->offline_logged_ms >= KV_OFFLINE_LOG_MS) {
        kt->offline_logged_ms = now;
        cmk_warning("token %s: %s still unreachable, for %lld s", kt->name,
                    what, (long long)(now - kt->offline_since_ms) / 1000);
    }
    pthread_mutex_unlock(&kt->lock);
}

/* A replica's breaker and health after a call: latency_ms >= 0 when it
 * answered (any status), why when it did not or refused. */
static void circuit_record(struct kv_token *kt, struct kv_replica *rep,
                           bool unavailable, int64_t latency_ms,
                           const char *why)
{
    pthread_mutex_lock(&kt->lock);
    rep->probing = false;
    snprintf(rep->error, sizeof(rep->error), "%s", why ? why : "");
    if (latency_ms >= 0) {
        int64_t l = latency_ms > 0 ? latency_ms : 1; /* 0: none yet */
        rep->answered = true;
        rep->ewma_ms = rep->ewma_ms == 0 ? l : (rep->ewma_ms * 3 + l) / 4;
    }
    if (!unavailable) {
        if (rep->failures >= KV_CIRCUIT_FAILURES)
            cmk_info("token %s: %s answers again%s", kt->name, rep->host,
                     kt->nrep > 1 ? "; traffic returns to it" : "");
        rep->failures = 0;
    } else {
        rep->answered = false;
        if (++rep->failures >= KV_CIRCUIT_FAILURES) {
            rep->open_until_ms = kv_now_ms() + KV_CIRCUIT_OPEN_MS;
            if (rep->failures == KV_CIRCUIT_FAILURES)
                cmk_error("token %s: %s failed %d calls in a row; failing "
                          "fast for %d s before trying again",
                          kt->name, rep->host, rep->failures,
                          KV_CIRCUIT_OPEN_MS / 1000);
        }
    }
    pthread_mutex_unlock(&kt->lock);
}

/* An answer that is not what the REST API describes (docs/errors.md). */
void kv_malformed(struct kv_token *kt, const char *method, const char *path,
                  const char *why)
{
    cmk_error("token %s: %s %s: kv_malformed answer from %s: %s", kt->name,
              method, path, kv_call_host ? kv_call_host : kt->host, why);
}

/* Fresh tokens one call may fetch after the vault refused its token. */
#define KV_TOKEN_REFRESHES 2

/*
 * One Key Vault call to one vault of vault-url with the whole retry
 * policy: the 401 challenge (once), a refused token (refreshed at most
 * KV_TOKEN_REFRESHES times), retries of 408/429/5xx and transport errors with
 * backoff, all within the call's deadline. last: no other vault will be tried
 * after this one (its unreachability is the token's, for offline-grace).
 */
CK_RV kv_call(struct kv_token *kt, struct kv_replica *rep, struct pcall *c,
              const char *method, const char *path, const char *body,
              int64_t deadline, bool last, struct kv_result *res)
{
    char *url = with_api_version(rep, path), *token = NULL, *resource = NULL,
         *tenant = NULL;
    bool challenged = false, unavailable = false;
    int refreshes = 0;
    struct kv_request req;
    struct kv_response r;
    int attempt = 0;
    int64_t latency = -1;
    char why[160] = "";
    CK_RV rv = CKR_DEVICE_ERROR;

    memset(res, 0, sizeof(*res));
    kv_call_host = rep->host;
    if (url == NULL)
        return CKR_HOST_MEMORY;
    /* A path beginning with '/' is appended to the vault's URL, which has
     * no '/' of its own and passed this check in kv-config.c: its host and
     * port are the vault's. Anything else (a link the vault sent) is
     * checked. libcurl's URL parser costs about 12,000 instructions, 4 %
     * of a remote unwrap (docs/performance.md). */
    if (path[0] != '/' && !kv_same_origin(rep->url, url)) {
        char shown[128];
        snprintf(shown, sizeof(shown), "%.*s", (int)strcspn(url, "?#"), url);
        cmk_error("token %s: the vault sent a link to %s, which is not on "
                  "%s: not following it (the vault's token goes only to the "
                  "vault)",
                  kt->name, shown, rep->host);
        free(url);
        c->device_error = 0;
        return CKR_DEVICE_ERROR;
    }
    kv_call_unreachable = false;
    if (!circuit_allows(kt, rep)) {
        free(url);
        c->device_error = 0;
        kv_call_unreachable = true;
        if (last)
            token_reach(kt, true);
        return CKR_DEVICE_ERROR;
    }
    for (;;) {
        long identity_status = 0;
        int64_t left = deadline - kv_now_ms();

        if (left <= 0) {
            cmk_error("token %s: %s %s: no answer from %s within the "
                      "deadline",
                      kt->name, method, path, rep->host);
            snprintf(why, sizeof(why), "no answer within the deadline");
            rv = CKR_DEVICE_ERROR;
            unavailable = true;
            break;
        }
        pthread_mutex_lock(&kt->lock);
        free(resource);
        free(tenant);
        resource = kt->resource ? strdup(kt->resource) : NULL;
        tenant = kt->tenant ? strdup(kt->tenant) : NULL;
        pthread_mutex_unlock(&kt->lock);
        if (resource != NULL && token == NULL) {
            rv = kv_auth_token(kt->auth, resource, tenant, refreshes > 0,
                               deadline, &token, &identity_status);
            if (rv != CKR_OK) {
                c->device_error = (CK_ULONG)identity_status;
                /* Unreachable or 5xx/429: an outage; any other answer
                 * (the identity does not exist, a refused secret) is
                 * revocation evidence. */
                unavailable = identity_status <= 0 || identity_status == 410 ||
                              identity_status == 429 || identity_status >= 500;
                snprintf(why, sizeof(why), "no token (identity endpoint: %ld)",
                         identity_status);
                rv = CKR_DEVICE_ERROR;
                break;
            }
        }
        memset(&req, 0, sizeof(req));
        req.method = method;
        req.url = url;
        req.body = body;
        req.bearer = token;
        req.attempt = attempt;
        {
            int64_t t0 = kv_now_ms();
            if (kv_http_do(kt->http, &req, (long)left, &r) != 0) {
                kv_response_clear(&r);
                rv = CKR_HOST_MEMORY;
                break;
            }
            if (r.curl == CURLE_OK)
                latency = kv_now_ms() - t0;
        }
        res->status = r.status;
        c->device_error = (CK_ULONG)r.status;
        if (r.curl == CURLE_OK && r.status == 401) {
            char *nres = NULL, *nten = NULL;
            bool parsed = kv_parse_challenge(r.www_authenticate, &nres, &nten);
            if (parsed && !resource_matches(rep->host, nres)) {
                cmk_error("token %s: the vault's challenge names resource %s, "
                          "which %s is not part of; refusing it",
                          kt->name, nres, rep->host);
                free(nres);
                free(nten);
                kv_response_clear(&r);
                rv = CKR_DEVICE_ERROR;
                break;
            }
            if (parsed) {
                pthread_mutex_lock(&kt->lock);
                free(kt->resource);
                free(kt->tenant);
                kt->resource = nres;
                kt->tenant = nten;
                pthread_mutex_unlock(&kt->lock);
            }
            kv_response_clear(&r);
            if (token == NULL && parsed && !challenged) {
                challenged = true; /* the first request of this vault */
                continue;
            }
            if (token != NULL && refreshes < KV_TOKEN_REFRESHES) {
                /* Expired or revoked token: fetch one issued after this
                 * answer. Twice: a token being issued while the old ones
                 * were revoked (continuous access evaluation, a rolled
                 * secret) is refused too, and only the next is good. */
                secure_free(token);
                token = NULL;
                refreshes++;
                continue;
            }
            cmk_error("token %s: %s refused the credentials (401)", kt->name,
                      rep->host);
            snprintf(why, sizeof(why), "401: the credentials were refused");
            rv = CKR_DEVICE_ERROR;
            break;
        }
        if (r.curl == CURLE_OK && r.status >= 200 && r.status < 300) {
            char bad_body[128];
            res->doc = r.len > 0 ? kv_parse_body(r.body, r.len, bad_body,
                                                 sizeof(bad_body))
                                 : NULL;
            if (r.len > 0 && res->doc == NULL) {
                kv_malformed(kt, method, path, bad_body);
                rv = CKR_DEVICE_ERROR;
            } else {
                rv = CKR_OK;
            }
            kv_response_clear(&r);
            break;
        }
        if (retriable(&r) && attempt < kt->retries) {
            int64_t wait = backoff_ms(&r, attempt);
            if (kv_now_ms() + wait < deadline) {
                cmk_info("token %s: %s %s: %ld %s; retry %d in %lld ms",
                         kt->name, method, path, r.status,
                         r.curl ? curl_easy_strerror(r.curl) : "", attempt + 1,
                         (long long)wait);
                kv_response_clear(&r);
                attempt++;
                kv_sleep_ms(wait);
                continue;
            }
        }
        unavailable = retriable(&r);
        if (r.curl != CURLE_OK) {
            if (kv_http_tls_failure(r.curl)) /* the reason is logged */
                cmk_error("token %s: %s %s: not sent, %s's certificate was "
                          "not accepted",
                          kt->name, method, path, rep->host);
            else
                cmk_error("token %s: %s is unreachable: %s", kt->name,
                          rep->host, curl_easy_strerror(r.curl));
            snprintf(why, sizeof(why), "%s", curl_easy_strerror(r.curl));
            rv = CKR_DEVICE_ERROR;
        } else {
            if (unavailable)
                cmk_error("token %s: %s answered %ld after %d retries",
                          kt->name, rep->host, r.status, attempt);
            rv = kv_map_http(r.status, r.body, res->code, sizeof(res->code),
                             res->message, sizeof(res->message));
            snprintf(why, sizeof(why), "HTTP %ld%s%s", r.status,
                     res->code[0] ? " " : "", res->code);
            if (r.status == 404 && strcmp(res->code, "VaultNotFound") == 0)
                cmk_warning("token %s: the vault %s does not exist (404 "
                            "VaultNotFound: %s); check vault-url",
                            kt->name, rep->host, res->message);
        }
        kv_response_clear(&r);
        break;
    }
    circuit_record(kt, rep, unavailable, latency, why);
    if (!unavailable || last)
        token_reach(kt, unavailable);
    kv_call_unreachable = unavailable;
    secure_free(token);
    free(url);
    free(resource);
    free(tenant);
    return rv;
}

/* The vault's own message, on one line (RBAC messages hold CR LF). */
void kv_one_line(const char *in, char *out, size_t len)
{
    size_t i = 0;
    bool space = false;

    for (; *in != '\0' && i + 1 < len; in++) {
        if (*in == '\r' || *in == '\n' || *in == '\t' || *in == ' ') {
            space = i > 0;
            continue;
        }
        if ((unsigned char)*in < 0x20)
            continue;
        if (space && i + 2 < len)
            out[i++] = ' ';
        space = false;
        out[i++] = *in;
    }
    out[i] = '\0';
}

/*
 * The RBAC data action that covers an access-policy key permission
 * (learn.microsoft.com, "Azure built-in roles for Key Vault data plane
 * operations"; keys/read covers both get and list).
 */
static const char *rbac_action(const char *perm)
{
    if (strcmp(perm, "get") == 0 || strcmp(perm, "list") == 0)
        return "read";
    if (strcmp(perm, "update") == 0)
        return "write";
    /* The rotation policy's own data actions (the built-in role Key Vault
     * Crypto Officer lists them). */
    if (strcmp(perm, "getrotationpolicy") == 0)
        return "rotationpolicy/read";
    if (strcmp(perm, "setrotationpolicy") == 0)
        return "rotationpolicy/write";
    return NULL; /* the others are "<perm>/action" */
}

/*
 * A message a person can act on, for a failed key operation. perm is the
 * key permission the refused request needed (access-policy name): a 403
 * names it, and the RBAC action that covers it; a 403 from the firewall
 * says it is the network rule, not the identity.
 */
void kv_explain(struct kv_token *kt, const char *key, const char *op,
                const char *perm, const struct kv_result *res, CK_RV rv)
{
    const char *code = res->code[0] ? res->code : "";
    const char *host = kv_call_host ? kv_call_host : kt->host;
    char said[sizeof(res->message)], action[64];

    if (strcmp(code, "VaultNotFound") == 0)
        return; /* kv_call said so */
    kv_one_line(res->message, said, sizeof(said));
    if (res->status == 403 && (strcmp(code, "KeyDisabled") == 0))
        cmk_error("key %s in %s is disabled: %s refused (403 %s); enable "
                  "the key or use another version",
                  key, host, op, code);
    else if (res->status == 403 && (strncmp(code, "KeyNotYetValid", 14) == 0 ||
                                    strncmp(code, "KeyExpired", 10) == 0))
        cmk_error("key %s in %s is outside its validity dates: %s refused "
                  "(403 %s)",
                  key, host, op, code);
    else if (res->status == 403 && strcmp(code, "KeyOperationForbidden") == 0)
        cmk_error("key %s in %s does not permit %s (403 %s): add the "
                  "operation to the key's key_ops (az keyvault key "
                  "set-attributes --ops); the vault said: %s",
                  key, host, op, code, said);
    else if (res->status == 403 && strcmp(code, "ForbiddenByFirewall") == 0)
        cmk_error("the network rules of %s refused this host: %s of key %s "
                  "(403 %s); this is the vault's firewall, not the "
                  "identity's permissions: allow this host's address in the "
                  "vault's networking settings or use a private endpoint; "
                  "the vault said: %s",
                  host, op, key, code, said);
    else if (res->status == 403) {
        const char *a = rbac_action(perm);
        snprintf(action, sizeof(action), "Microsoft.KeyVault/%s/keys/%s%s",
                 kt->mhsm ? "managedHsm" : "vaults", a ? a : perm,
                 a ? "" : "/action");
        cmk_error("access to key %s in %s was denied (403 %s): %s needs the "
                  "keys %s permission; grant the identity %s (access policy) "
                  "or a role with %s (RBAC); the vault said: %s",
                  key, host, code, op, perm, perm, action, said);
    } else if (res->status == 409)
        cmk_error("key %s in %s: %s refused (409 %s): the name is held by a "
                  "key being deleted or deleted but recoverable; recover or "
                  "purge it, or choose another name; the vault said: %s",
                  key, host, op, code, said);
    else if (res->status == 404)
        cmk_error("key %s was not found in %s (404 %s): it was deleted or "
                  "the version does not exist; recover it or use another",
                  key, host, code);
    else if (res->status == 400)
        cmk_error("key %s in %s: %s refused (400 %s): the data does not "
                  "fit this key",
                  key, host, op, code);
    else if (res->status != 0)
        cmk_error("key %s in %s: %s failed (%ld %s): %s", key, host, op,
                  res->status, code, cmk_rv_name(rv));
}
