/*
 * The configuration parser: the documented example, every error path,
 * choice of file, file permissions and the token lookups.
 */
#include "config.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "debug.h"
#include "module/conf.h"
#include "p11.h"
#include "test.h"

static char err[512];

/* The example of product.md, "Configuration file". */
static const char example[] =
    "[cmkp11]\n"
    "log-level = warning          # error | warning | info | debug\n"
    "log-file = stderr            # stderr | syslog | /path\n"
    "refresh-interval = 60        # seconds between key-list refreshes (0 = "
    "only at start)\n"
    "\n"
    "[token payments]             # one slot per [token NAME]; token label = "
    "NAME\n"
    "backend = keyvault\n"
    "vault-url = https://contoso.vault.azure.net\n"
    "keys = payments-kek, audit-kek   # optional allow-list; default: every "
    "RSA key\n"
    "auth = managed-identity      # managed-identity | client-secret | "
    "client-certificate\n"
    "                             # | workload-identity | azure-cli | "
    "access-token-file\n"
    "tenant-id = ...\n"
    "client-id = ...\n"
    "client-secret-file = /etc/cmkp11/payments.secret\n"
    "authority-host = https://login.microsoftonline.com\n"
    "ca-file = /etc/cmkp11/extra-ca.pem   # extra trust anchors (the local "
    "emulator's CA)\n"
    "local-public-ops = yes       # encrypt / wrap / verify locally with the "
    "cached public key\n"
    "timeout = 10                 # seconds for one HTTP request\n"
    "deadline = 30                # seconds for one PKCS#11 call, retries "
    "included\n"
    "retries = 4                  # retries of 408/429/5xx/transport errors, "
    "honouring Retry-After\n"
    "key-type = RSA-HSM           # what C_GenerateKeyPair creates: RSA | "
    "RSA-HSM\n"
    "pin-file = /etc/cmkp11/payments.pin  # optional: then the token requires "
    "C_Login with this PIN;\n"
    "                             # without it the token needs no login "
    "(CKF_LOGIN_REQUIRED clear)\n"
    "# auth-specific keys:\n"
    "#   client-secret-file, secondary-client-secret-file (tried when the "
    "first is rejected)\n"
    "#   imds-endpoint  (managed-identity; plain http is allowed here only, "
    "as IMDS is)\n"
    "unwrap-fallback = yes        # see Rotation\n"
    "unwrap-cache = 0             # seconds; 0 = off\n"
    "\n"
    "[token local]\n"
    "certificates = generate      # certificate objects beside keys (Java "
    "needs them):\n"
    "                             # generate (self-signed through the key) | "
    "/dir/of/pem | none\n"
    "backend = hsm\n"
    "module = /usr/lib/softhsm/libsofthsm2.so\n"
    "token-label = cmk            # or: token-uri = pkcs11:token=cmk\n"
    "pin-file = /etc/cmkp11/local.pin   # optional; otherwise C_Login's PIN "
    "is forwarded\n"
    "keys = kek                   # optional allow-list\n";

static struct config *parse(const char *text)
{
    return config_parse("test.conf", text, strlen(text), err, sizeof(err));
}

/* The text must fail, with "test.conf:LINE:" and the key in the error. */
static void check_error(const char *text, int line, const char *key,
                        const char *what)
{
    char where[64];
    struct config *cfg = parse(text);

    snprintf(where, sizeof(where), "test.conf:%d: ", line);
    ok(cfg == NULL && strncmp(err, where, strlen(where)) == 0 &&
           (key == NULL || strstr(err, key) != NULL),
       "%s: rejected at line %d", what, line);
    if (cfg != NULL || strncmp(err, where, strlen(where)) != 0)
        test_diag("  error: '%s'", err);
    config_free(cfg);
}

static void test_example(void)
{
    struct config *cfg = parse(example);
    const struct config_token *kv, *local;
    bool b = false;
    long n = -1;

    ok(cfg != NULL, "the documented example parses");
    if (cfg == NULL) {
        test_diag("  error: %s", err);
        return;
    }
    is_num(cfg->n_tokens, 2, "two tokens");
    is_num(cfg->log_level, CMK_LOG_WARNING, "log-level warning");
    ok(cfg->log_file != NULL && strcmp(cfg->log_file, "stderr") == 0,
       "log-file stderr");
    is_num(cfg->refresh_interval, 60, "refresh-interval 60");
    is_num(cfg->min_key_bits, 2048, "min-key-bits defaults to 2048");
    ok(cfg->audit_log == NULL, "audit-log off by default");

    kv = &cfg->tokens[0];
    local = &cfg->tokens[1];
    ok(strcmp(kv->name, "payments") == 0 && kv->line == 6,
       "first token is payments, at line 6");
    ok(strcmp(local->name, "local") == 0, "second token is local");
    ok(strcmp(config_token_get(kv, "backend"), "keyvault") == 0,
       "backend = keyvault");
    ok(strcmp(config_token_get(kv, "vault-url"),
              "https://contoso.vault.azure.net") == 0,
       "vault-url keeps its '//'");
    ok(strcmp(config_token_get(kv, "keys"), "payments-kek, audit-kek") == 0,
       "inline comment cut from keys, inner spaces kept");
    ok(strcmp(config_token_get(kv, "ca-file"), "/etc/cmkp11/extra-ca.pem") == 0,
       "inline comment with an apostrophe cut");
    is_num(config_token_get_bool(kv, "local-public-ops", &b, err, sizeof(err)),
           1, "local-public-ops is a bool");
    ok(b, "local-public-ops = yes");
    is_num(config_token_get_long(kv, "retries", 0, 100, &n, err, sizeof(err)),
           1, "retries is a number");
    is_num(n, 4, "retries = 4");
    ok(config_token_get(kv, "imds-endpoint") == NULL,
       "commented-out key is absent");
    is_num(config_token_line(kv, "backend"), 7, "backend is on line 7");
    is_num(config_token_line(kv, "no-such-key"), 6,
           "absent key reports the section line");
    ok(strcmp(config_token_get(local, "module"),
              "/usr/lib/softhsm/libsofthsm2.so") == 0,
       "module path");
    ok(strcmp(config_token_get(local, "token-label"), "cmk") == 0,
       "token-label");
    ok(strcmp(kv->path, "test.conf") == 0, "token remembers the file");

    /* Unused key detection: ask for all but one in [token local]. */
    config_token_get(local, "certificates");
    config_token_get(local, "backend");
    config_token_get(local, "pin-file");
    config_token_get(local, "keys");
    ok(config_token_unused(local) == NULL, "every key in local was used");
    {
        const struct config_entry *e = config_token_unused(kv);
        ok(e != NULL && strcmp(e->key, "auth") == 0,
           "first unused key in payments is auth");
    }
    config_free(cfg);
}

static void test_globals(void)
{
    struct config *cfg;

    cfg = parse("[cmkp11]\nlog-level = debug\nlog-file = /var/log/c.log\n"
                "refresh-interval = 0\naudit-log = /var/log/audit.json\n"
                "min-key-bits = 3072\n");
    ok(cfg != NULL && cfg->log_level == CMK_LOG_DEBUG &&
           strcmp(cfg->log_file, "/var/log/c.log") == 0 &&
           cfg->refresh_interval == 0 &&
           strcmp(cfg->audit_log, "/var/log/audit.json") == 0 &&
           cfg->min_key_bits == 3072 && cfg->n_tokens == 0,
       "every global key");
    config_free(cfg);

    cfg = parse("[cmkp11]\nrsa-pkcs1-decrypt = allow\n");
    ok(cfg != NULL && cfg->rsa_pkcs1_decrypt == CONFIG_PKCS1_ALLOW,
       "rsa-pkcs1-decrypt = allow");
    config_free(cfg);
    cfg = parse("[cmkp11]\nrsa-pkcs1-decrypt = refuse\n");
    ok(cfg != NULL && cfg->rsa_pkcs1_decrypt == CONFIG_PKCS1_REFUSE,
       "rsa-pkcs1-decrypt = refuse");
    config_free(cfg);
    cfg = parse("[cmkp11]\nrsa-pkcs1-decrypt = implicit-rejection\n");
    ok(cfg != NULL && cfg->rsa_pkcs1_decrypt == CONFIG_PKCS1_IMPLICIT,
       "rsa-pkcs1-decrypt = implicit-rejection");
    config_free(cfg);
    cfg = parse("");
    ok(cfg != NULL && cfg->rsa_pkcs1_decrypt == CONFIG_PKCS1_UNSET,
       "rsa-pkcs1-decrypt unset: the token's default");
    config_free(cfg);

    cfg = parse("");
    ok(cfg != NULL && cfg->n_tokens == 0 && cfg->log_level == CMK_LOG_WARNING &&
           cfg->refresh_interval == 60 && cfg->log_file == NULL,
       "empty file: defaults, no tokens");
    config_free(cfg);

    cfg = parse("[cmkp11]\r\nlog-level = info\r\n\r\n[token a]\r\n"
                "backend = hsm\r\n");
    ok(cfg != NULL && cfg->log_level == CMK_LOG_INFO && cfg->n_tokens == 1 &&
           strcmp(config_token_get(&cfg->tokens[0], "backend"), "hsm") == 0,
       "CRLF line ends");
    config_free(cfg);

    cfg = parse("[token a]\nbackend = hsm");
    ok(cfg != NULL && cfg->n_tokens == 1 &&
           strcmp(config_token_get(&cfg->tokens[0], "backend"), "hsm") == 0,
       "no newline at the end");
    config_free(cfg);

    cfg = parse("; comment\n  # comment\n[token  spaced name ]\n"
                "url = http://x/#frag ;comment\nkey=v\n");
    ok(cfg != NULL && strcmp(cfg->tokens[0].name, "spaced name") == 0 &&
           strcmp(config_token_get(&cfg->tokens[0], "url"), "http://x/#frag") ==
               0 &&
           strcmp(config_token_get(&cfg->tokens[0], "key"), "v") == 0,
       "comments, '#' inside a value, no spaces around '='");
    config_free(cfg);

    cfg = parse("[token 12345678901234567890123456789012]\n");
    ok(cfg != NULL, "token name of 32 bytes");
    config_free(cfg);
}

static void test_errors(void)
{
    char big[6000];
    static const char nul_text[] = "[cmkp11]\nlog-level = de\0bug\n";
    struct config *cfg;

    check_error("backend = hsm\n", 1, "backend", "key before any section");
    check_error("[cmkp11]\nlog-level = loud\n", 2, "log-level",
                "bad log-level");
    check_error("[cmkp11]\nlog-file = relative.log\n", 2, "log-file",
                "relative log-file");
    check_error("[cmkp11]\nrefresh-interval = -1\n", 2, "refresh-interval",
                "negative refresh-interval");
    check_error("[cmkp11]\nrefresh-interval = 99999999999\n", 2,
                "refresh-interval", "huge refresh-interval");
    check_error("[cmkp11]\nrefresh-interval = 10s\n", 2, "refresh-interval",
                "refresh-interval with a unit");
    check_error("[cmkp11]\nmin-key-bits = 256\n", 2, "min-key-bits",
                "min-key-bits too small");
    check_error(
        "[cmkp11]\nrsa-pkcs1-decrypt = yes\n", 2,
        "rsa-pkcs1-decrypt: must be implicit-rejection, refuse or allow",
        "rsa-pkcs1-decrypt = yes");
    check_error("[cmkp11]\naudit-log = audit.json\n", 2, "audit-log",
                "relative audit-log");
    check_error("[cmkp11]\nlog-levle = info\n", 2, "log-levle",
                "unknown global key");
    check_error("[cmkp11]\nlog-level = info\nlog-level = debug\n", 3,
                "log-level", "duplicate global key");
    check_error("[cmkp11]\n[cmkp11]\n", 2, NULL, "duplicate [cmkp11]");
    check_error("[token a]\nbackend = hsm\nbackend = keyvault\n", 3, "backend",
                "duplicate token key");
    check_error("[token a]\n[token a]\n", 2, "'a'", "duplicate token name");
    check_error("[tokens a]\n", 1, "tokens", "unknown section");
    check_error("[token a\n", 1, "unterminated", "unterminated '['");
    check_error("[token ]\n", 1, "empty", "empty token name");
    check_error("[token 123456789012345678901234567890123]\n", 1, "32",
                "token name of 33 bytes");
    check_error("[token a]x\n", 1, "after", "text after ']'");
    check_error("[token a]\nbackend hsm\n", 2, "key = value", "missing '='");
    check_error("[token a]\n= hsm\n", 2, "missing key", "missing key");
    check_error("[token a]\nBackend = hsm\n", 2, "Backend", "upper-case key");
    check_error("[token a]\nback_end = hsm\n", 2, "back_end",
                "underscore in key");
    check_error("[token a]\nbackend =   # nothing\n", 2, "empty value",
                "empty value");
    check_error("[cmkp11]\r\nlog-level = x\r\n", 2, "log-level",
                "error line counted with CRLF");
    check_error("[token a]\nbackend = h\rsm\n", 2, "carriage",
                "stray carriage return");

    cfg = config_parse("test.conf", nul_text, sizeof(nul_text) - 1, err,
                       sizeof(err));
    ok(cfg == NULL && strstr(err, "test.conf:2: ") == err &&
           strstr(err, "NUL") != NULL,
       "NUL byte rejected with its line");
    config_free(cfg);

    memset(big, 'x', sizeof(big));
    memcpy(big, "[token a]\nk = ", 14);
    big[sizeof(big) - 1] = '\0';
    check_error(big, 2, "longer", "overlong line");

    cfg = config_parse(NULL, NULL, 0, err, sizeof(err));
    ok(cfg != NULL && cfg->n_tokens == 0, "NULL text is an empty file");
    config_free(cfg);
    config_free(NULL);
}

static void test_token_values(void)
{
    struct config *cfg;
    const struct config_token *t;
    bool b;
    long n;
    int i;
    static const char *const yes[] = {"yes", "true", "on", "1", "YES"};
    static const char *const no[] = {"no", "false", "off", "0", "Off"};
    char text[128];

    for (i = 0; i < 5; i++) {
        snprintf(text, sizeof(text), "[token a]\ny = %s\nn = %s\n", yes[i],
                 no[i]);
        cfg = parse(text);
        t = cfg != NULL ? &cfg->tokens[0] : NULL;
        ok(t != NULL &&
               config_token_get_bool(t, "y", &b, err, sizeof(err)) == 1 && b &&
               config_token_get_bool(t, "n", &b, err, sizeof(err)) == 1 && !b,
           "bool %s / %s", yes[i], no[i]);
        config_free(cfg);
    }

    cfg = parse("[token a]\nflag = maybe\ncount = 12x\nbig = 101\n"
                "neg = -5\n");
    if (cfg == NULL)
        test_bail("parse failed: %s", err);
    t = &cfg->tokens[0];
    is_num(config_token_get_bool(t, "flag", &b, err, sizeof(err)), -1,
           "bool 'maybe' is refused");
    ok(strstr(err, "test.conf:2: flag:") == err, "bool error names line, key");
    is_num(config_token_get_bool(t, "absent", &b, err, sizeof(err)), 0,
           "absent bool");
    is_num(config_token_get_long(t, "count", 0, 100, &n, err, sizeof(err)), -1,
           "'12x' is not a number");
    ok(strstr(err, "test.conf:3: count:") == err,
       "number error names line, key");
    is_num(config_token_get_long(t, "big", 0, 100, &n, err, sizeof(err)), -1,
           "101 is above the maximum");
    is_num(config_token_get_long(t, "neg", -10, 10, &n, err, sizeof(err)), 1,
           "negative within range");
    ok(n == -5, "value -5");
    is_num(config_token_get_long(t, "absent", 0, 1, &n, err, sizeof(err)), 0,
           "absent number");
    ok(config_token_unused(t) == NULL, "bad values count as used");
    config_free(cfg);
}

static void test_choose_path(void)
{
    char *p;

    unsetenv("CMKP11_CONF");
    p = config_choose_path(NULL, err, sizeof(err));
    ok(p != NULL && strcmp(p, SYSCONFDIR "/cmkp11/cmkp11.conf") == 0,
       "default path");
    free(p);

    setenv("CMKP11_CONF", "/env/cmkp11.conf", 1);
    p = config_choose_path(NULL, err, sizeof(err));
    ok(p != NULL && strcmp(p, "/env/cmkp11.conf") == 0,
       "CMKP11_CONF beats the default");
    free(p);

    p = config_choose_path("conf=/reserved.conf", err, sizeof(err));
    ok(p != NULL && strcmp(p, "/reserved.conf") == 0,
       "pReserved conf= beats CMKP11_CONF");
    free(p);

    p = config_choose_path("debug, conf=/r2.conf;other", err, sizeof(err));
    ok(p != NULL && strcmp(p, "/r2.conf") == 0, "conf= among other options");
    free(p);

    p = config_choose_path("something-else", err, sizeof(err));
    ok(p != NULL && strcmp(p, "/env/cmkp11.conf") == 0,
       "pReserved without conf= falls through");
    free(p);

    p = config_choose_path("conf=", err, sizeof(err));
    ok(p == NULL && strstr(err, "conf=") != NULL, "empty conf= is refused");
    free(p);

    p = config_choose_path("conf=/a conf=/b", err, sizeof(err));
    ok(p == NULL, "two conf= are refused");
    free(p);

    setenv("CMKP11_CONF", "", 1);
    p = config_choose_path("", err, sizeof(err));
    ok(p != NULL && strcmp(p, SYSCONFDIR "/cmkp11/cmkp11.conf") == 0,
       "empty CMKP11_CONF is ignored");
    free(p);
    unsetenv("CMKP11_CONF");
}

static void test_load(void)
{
    char dir[] = "/tmp/cmkp11-test-config-XXXXXX";
    char path[256];
    struct config *cfg;

    if (mkdtemp(dir) == NULL)
        test_bail("mkdtemp failed");
    snprintf(path, sizeof(path), "%s/cmkp11.conf", dir);

    p11_write_path(path, "[token a]\nbackend = hsm\n", 0600);
    cfg = config_load(path, err, sizeof(err));
    ok(cfg != NULL && cfg->n_tokens == 1 && strcmp(cfg->path, path) == 0,
       "mode 0600 is accepted");
    config_free(cfg);

    chmod(path, 0664);
    cfg = config_load(path, err, sizeof(err));
    ok(cfg == NULL && strncmp(err, path, strlen(path)) == 0 &&
           strstr(err, "writable by group or others") != NULL,
       "mode 0664 is refused");
    config_free(cfg);

    p11_write_path(path, "[token a]\nbackend = hsm\nbogus\n", 0640);
    cfg = config_load(path, err, sizeof(err));
    ok(cfg == NULL && strncmp(err, path, strlen(path)) == 0 &&
           strstr(err, ":3: ") != NULL,
       "parse errors from config_load name the file and line");
    config_free(cfg);
    unlink(path);

    cfg = config_load(path, err, sizeof(err));
    ok(cfg == NULL && strstr(err, "No such file") != NULL,
       "a missing file is an error");
    config_free(cfg);
    rmdir(dir);
}

int main(void)
{
    test_example();
    test_globals();
    test_errors();
    test_token_values();
    test_choose_path();
    test_load();
    return test_done();
}
