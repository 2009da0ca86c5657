/*
 * cmkp11-tool: the tasks a person does by hand with customer-managed keys,
 * through the cmkp11 module only (PKCS#11 calls and vendor attributes).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool.h"

#ifndef CMKP11_DEFAULT_MODULE
#define CMKP11_DEFAULT_MODULE "cmkp11.so"
#endif

struct command {
    const char *name;
    tool_cmd_fn fn;
    int min_args, max_args; /* operands after the command's name */
    const char *usage;
    const char *summary;
    unsigned opts; /* the command's own options (*_OK); files: the
                      operands are files, not token or key selections */
};

#define KEY_OK     1u
#define TOKEN_OK   2u
#define TO_OK      4u
#define OUTPUT_OK  8u
#define FILES      16u
#define RETIRE_OK  32u /* --paths, --audit-log, --since, --dry-run, --undo */
#define POLICY_OK  64u /* --rotate-after, --notify-before, ... */
#define IF_DUE_OK  128u
#define STRICT_OK  256u
#define THREADS_OK 512u

static const struct command commands[] = {
    {"list", cmd_list, 0, 1, "list [TOKEN]",
     "tokens, keys and versions: back end, state, dates, type and size", 0},
    {"check", cmd_check, 0, 2, "check [TOKEN [KEY]]",
     "check the customer-managed key prerequisites (PASS or FAIL); with\n"
     "                         FILE|DIR: which keys can unseal sealed files",
     STRICT_OK},
    {"rotate", cmd_rotate, 1, 2, "rotate TOKEN KEY",
     "make a new version of KEY and show the old and the new one; with\n"
     "                         --if-due: only when its rotation policy says",
     IF_DUE_OK},
    {"rotation-policy", cmd_rotation_policy, 3, 3,
     "rotation-policy get|set TOKEN KEY",
     "show or set KEY's rotation policy (ISO 8601 durations)", POLICY_OK},
    {"seal", cmd_seal, 0, 1, "seal [IN] [-o OUT]",
     "envelope-encrypt IN (or standard input) under KEY's current version",
     KEY_OK | TOKEN_OK | OUTPUT_OK | THREADS_OK | FILES},
    {"unseal", cmd_unseal, 0, 1, "unseal [IN] [-o OUT]",
     "decrypt a sealed file, verifying every segment",
     TOKEN_OK | OUTPUT_OK | THREADS_OK | FILES},
    {"rewrap", cmd_rewrap, 0, INT_MAX, "rewrap FILE|DIR... | --token TOKEN",
     "wrap sealed files' data keys under the current version (or KEY);\n"
     "                         with --token alone: the token's secret keys",
     TOKEN_OK | TO_OK | FILES},
    {"retire", cmd_retire, 2, 2, "retire TOKEN KEY@VERSION",
     "disable an old version once no sealed file under --paths and no\n"
     "                         --audit-log record within --since uses it",
     RETIRE_OK},
};

void tool_error(const char *fmt, ...)
{
    va_list ap;

    fputs("cmkp11-tool: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static void usage(FILE *f)
{
    size_t i;

    fprintf(f, "Usage: cmkp11-tool [OPTION...] COMMAND [ARG...]\n\n"
               "Commands:\n");
    for (i = 0; i < CMK_ARRAY_SIZE(commands); i++)
        fprintf(f, "  %-22s %s\n", commands[i].usage, commands[i].summary);
    fprintf(f,
            "\nTOKEN is a token label or a pkcs11: URI (RFC 7512); KEY is a "
            "key name or a\npkcs11: URI.\n\n"
            "Options:\n"
            "  --module PATH       the PKCS#11 module (default %s)\n"
            "  --pin PIN           the token's user PIN, when it requires a "
            "login\n"
            "  --pin-file FILE     read the PIN from FILE (not readable by "
            "others, not\n"
            "                      writable by group or others); or set "
            "CMKP11_PIN\n"
            "  --json              print JSON instead of text\n"
            "  --key KEY           seal: the key to seal under (a name or "
            "pkcs11: URI);\n"
            "                      repeat it for several keys, any of which "
            "unseals\n"
            "  --require-all       seal: every --key is needed to unseal\n"
            "  --token TOKEN       seal, rewrap: the token of --key or --to; "
            "unseal: the\n"
            "                      token to unseal on instead of the file's\n"
            "  --to KEY            rewrap: wrap under KEY's current version "
            "(else the\n"
            "                      current version of each file's key)\n"
            "  --add-key KEY       rewrap: add KEY as another key of each "
            "file\n"
            "  --remove-key KEY    rewrap: remove KEY from each file's keys\n"
            "  -o, --output FILE   seal, unseal: write to FILE (default: "
            "standard output)\n"
            "  --threads N         seal, unseal: segments encrypted at once "
            "(1 to %d;\n"
            "                      default: the online CPUs, at most %d, on "
            "an hsm token,\n"
            "                      1 on a keyvault token)\n"
            "  --paths DIR         retire: sealed files here must not name "
            "the version\n"
            "                      (repeat for more directories or files)\n"
            "  --audit-log FILE    retire: the module's audit log to read "
            "(repeat)\n"
            "  --since AGE         retire: audit records this recent count "
            "(90m, 24h, 7d;\n"
            "                      default 24h)\n"
            "  --dry-run           retire: report only, change nothing\n"
            "  --undo              retire: enable the version again\n"
            "  --rotate-after DUR  rotation-policy set: rotate DUR after a "
            "version is made\n"
            "  --rotate-before-expiry DUR\n"
            "                      rotation-policy set: rotate DUR before "
            "expiry\n"
            "  --notify-before DUR rotation-policy set: notify DUR before "
            "expiry\n"
            "  --expire-after DUR  rotation-policy set: new versions expire "
            "DUR after\n"
            "                      they are made (at least P28D)\n"
            "  --if-due            rotate: only when the key's rotation "
            "policy says so\n"
            "  --strict            check: warnings (WARN) fail too\n"
            "  --min-key-bits N    the smallest RSA size check accepts "
            "(default: the\n"
            "                      module's min-key-bits where it shows it, "
            "else 2048)\n"
            "  -h, --help          show this help and exit\n"
            "  -V, --version       show the version and exit\n\n"
            "Exit status: 0 ok, 1 failed (or a check failed), 2 usage, 3 "
            "retire refused.\n"
            "See cmkp11-tool(1).\n",
            CMKP11_DEFAULT_MODULE, TOOL_THREADS_MAX, TOOL_THREADS_DEFAULT_MAX);
}

static const struct command *find_command(const char *name)
{
    size_t i;

    for (i = 0; i < CMK_ARRAY_SIZE(commands); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

enum {
    OPT_MODULE = 256,
    OPT_PIN,
    OPT_PIN_FILE,
    OPT_JSON,
    OPT_MIN_BITS,
    OPT_KEY,
    OPT_TOKEN,
    OPT_TO,
    OPT_REQUIRE_ALL,
    OPT_ADD_KEY,
    OPT_REMOVE_KEY,
    OPT_PATHS,
    OPT_AUDIT_LOG,
    OPT_SINCE,
    OPT_DRY_RUN,
    OPT_UNDO,
    OPT_ROTATE_AFTER,
    OPT_ROTATE_BEFORE,
    OPT_NOTIFY_BEFORE,
    OPT_EXPIRE_AFTER,
    OPT_IF_DUE,
    OPT_STRICT,
    OPT_THREADS,
};

static int parse_long_arg(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"module", required_argument, NULL, OPT_MODULE},
        {"pin", required_argument, NULL, OPT_PIN},
        {"pin-file", required_argument, NULL, OPT_PIN_FILE},
        {"json", no_argument, NULL, OPT_JSON},
        {"min-key-bits", required_argument, NULL, OPT_MIN_BITS},
        {"key", required_argument, NULL, OPT_KEY},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"to", required_argument, NULL, OPT_TO},
        {"require-all", no_argument, NULL, OPT_REQUIRE_ALL},
        {"add-key", required_argument, NULL, OPT_ADD_KEY},
        {"remove-key", required_argument, NULL, OPT_REMOVE_KEY},
        {"paths", required_argument, NULL, OPT_PATHS},
        {"audit-log", required_argument, NULL, OPT_AUDIT_LOG},
        {"since", required_argument, NULL, OPT_SINCE},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        {"undo", no_argument, NULL, OPT_UNDO},
        {"output", required_argument, NULL, 'o'},
        {"rotate-after", required_argument, NULL, OPT_ROTATE_AFTER},
        {"rotate-before-expiry", required_argument, NULL, OPT_ROTATE_BEFORE},
        {"notify-before", required_argument, NULL, OPT_NOTIFY_BEFORE},
        {"expire-after", required_argument, NULL, OPT_EXPIRE_AFTER},
        {"if-due", no_argument, NULL, OPT_IF_DUE},
        {"strict", no_argument, NULL, OPT_STRICT},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct tool_opts o;
    const struct command *cmd;
    const char *pin_file = NULL;
    struct tmod m;
    int c, nargs, status = TOOL_USAGE;
    bool retire_opt = false;

    memset(&o, 0, sizeof(o));
    o.module = CMKP11_DEFAULT_MODULE;
    while ((c = getopt_long(argc, argv, "hVo:", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_MODULE:
            o.module = optarg;
            break;
        case OPT_PIN:
            if (tpin_from_arg(&o.pin, optarg) < 0)
                goto out;
            /* Wiped from argv at once, but /proc/PID/cmdline shows it to
             * every user until then (and ps may have caught it). */
            tool_error("warning: --pin shows the PIN in the process list "
                       "to other users; prefer --pin-file or CMKP11_PIN");
            break;
        case OPT_PIN_FILE:
            pin_file = optarg;
            break;
        case OPT_JSON:
            o.json = true;
            break;
        case OPT_MIN_BITS:
            if (parse_long_arg(optarg, 512, 16384, &o.min_key_bits) < 0) {
                tool_error("--min-key-bits: a number of bits from 512 to "
                           "16384, not '%s'",
                           optarg);
                goto out;
            }
            break;
        case OPT_KEY:
            if (o.nkeys == CMK_ARRAY_SIZE(o.keys)) {
                tool_error("--key: at most %zu keys", CMK_ARRAY_SIZE(o.keys));
                goto out;
            }
            o.keys[o.nkeys++] = optarg;
            if (o.key == NULL)
                o.key = optarg;
            break;
        case OPT_REQUIRE_ALL:
            o.require_all = true;
            break;
        case OPT_ADD_KEY:
            o.add_key = optarg;
            break;
        case OPT_REMOVE_KEY:
            o.remove_key = optarg;
            break;
        case OPT_TOKEN:
            o.token = optarg;
            break;
        case OPT_TO:
            o.to = optarg;
            break;
        case 'o':
            o.output = optarg;
            break;
        case OPT_PATHS:
            if (o.npaths == CMK_ARRAY_SIZE(o.paths)) {
                tool_error("--paths: at most %zu", CMK_ARRAY_SIZE(o.paths));
                goto out;
            }
            o.paths[o.npaths++] = optarg;
            retire_opt = true;
            break;
        case OPT_AUDIT_LOG:
            if (o.naudit == CMK_ARRAY_SIZE(o.audit_logs)) {
                tool_error("--audit-log: at most %zu",
                           CMK_ARRAY_SIZE(o.audit_logs));
                goto out;
            }
            o.audit_logs[o.naudit++] = optarg;
            retire_opt = true;
            break;
        case OPT_SINCE:
            if (retire_parse_since(optarg, &o.since) < 0) {
                tool_error("--since: an age such as 90m, 24h or 7d (minutes, "
                           "hours or days), not '%s'",
                           optarg);
                goto out;
            }
            o.since_set = retire_opt = true;
            break;
        case OPT_DRY_RUN:
            o.dry_run = retire_opt = true;
            break;
        case OPT_UNDO:
            o.undo = retire_opt = true;
            break;
        case OPT_ROTATE_AFTER:
            o.rotate_after = optarg;
            break;
        case OPT_ROTATE_BEFORE:
            o.rotate_before = optarg;
            break;
        case OPT_NOTIFY_BEFORE:
            o.notify_before = optarg;
            break;
        case OPT_EXPIRE_AFTER:
            o.expire_after = optarg;
            break;
        case OPT_IF_DUE:
            o.if_due = true;
            break;
        case OPT_STRICT:
            o.strict = true;
            break;
        case OPT_THREADS:
            if (parse_long_arg(optarg, 1, TOOL_THREADS_MAX, &o.threads) < 0) {
                tool_error("--threads: a number of threads from 1 to %d, "
                           "not '%s'",
                           TOOL_THREADS_MAX, optarg);
                goto out;
            }
            break;
        case 'h':
            usage(stdout);
            status = TOOL_OK;
            goto out;
        case 'V':
            printf("cmkp11-tool (%s) %s\n", PACKAGE_NAME, PACKAGE_VERSION);
            status = TOOL_OK;
            goto out;
        default:
            fputs("Try 'cmkp11-tool --help'.\n", stderr);
            goto out;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        goto out;
    }
    if (strcmp(argv[optind], "help") == 0) {
        usage(stdout);
        status = TOOL_OK;
        goto out;
    }
    cmd = find_command(argv[optind]);
    if (cmd == NULL) {
        tool_error("unknown command '%s'; try 'cmkp11-tool --help'",
                   argv[optind]);
        goto out;
    }
    nargs = argc - optind - 1;
    if (nargs < cmd->min_args || nargs > cmd->max_args) {
        tool_error("usage: cmkp11-tool [OPTION...] %s", cmd->usage);
        goto out;
    }
    if ((o.require_all && !(cmd->opts & KEY_OK)) ||
        ((o.add_key != NULL || o.remove_key != NULL) && !(cmd->opts & TO_OK))) {
        tool_error("%s does not take --%s", cmd->name,
                   o.require_all       ? "require-all"
                   : o.add_key != NULL ? "add-key"
                                       : "remove-key");
        goto out;
    }
    if ((o.key != NULL && !(cmd->opts & KEY_OK)) ||
        (o.token != NULL && !(cmd->opts & TOKEN_OK)) ||
        (o.to != NULL && !(cmd->opts & TO_OK)) ||
        (o.output != NULL && !(cmd->opts & OUTPUT_OK))) {
        tool_error("%s does not take --%s", cmd->name,
                   o.key != NULL && !(cmd->opts & KEY_OK)       ? "key"
                   : o.token != NULL && !(cmd->opts & TOKEN_OK) ? "token"
                   : o.to != NULL && !(cmd->opts & TO_OK)       ? "to"
                                                                : "output");
        goto out;
    }
    if (((o.rotate_after || o.rotate_before || o.notify_before ||
          o.expire_after) &&
         !(cmd->opts & POLICY_OK)) ||
        (o.if_due && !(cmd->opts & IF_DUE_OK)) ||
        (o.strict && !(cmd->opts & STRICT_OK)) ||
        (o.threads != 0 && !(cmd->opts & THREADS_OK))) {
        tool_error("%s does not take --%s", cmd->name,
                   o.if_due && !(cmd->opts & IF_DUE_OK)          ? "if-due"
                   : o.strict && !(cmd->opts & STRICT_OK)        ? "strict"
                   : o.threads != 0 && !(cmd->opts & THREADS_OK) ? "threads"
                   : o.rotate_after  ? "rotate-after"
                   : o.rotate_before ? "rotate-before-expiry"
                   : o.notify_before ? "notify-before"
                                     : "expire-after");
        goto out;
    }
    if (retire_opt && !(cmd->opts & RETIRE_OK)) {
        tool_error("%s does not take --%s", cmd->name,
                   o.npaths      ? "paths"
                   : o.naudit    ? "audit-log"
                   : o.since_set ? "since"
                   : o.dry_run   ? "dry-run"
                                 : "undo");
        goto out;
    }
    if (o.since_set && o.naudit == 0) {
        tool_error("--since: give the audit logs to read (--audit-log FILE)");
        goto out;
    }
    if (o.undo && (o.npaths || o.naudit)) {
        tool_error("retire --undo enables the version again: it takes no "
                   "--paths or --audit-log");
        goto out;
    }
    for (c = optind + 1; c < argc && !(cmd->opts & FILES); c++) {
        struct tsel sel;
        if (tsel_parse(&sel, argv[c]) < 0)
            goto out; /* a malformed URI is a usage error */
        tsel_clear(&sel);
    }
    if (pin_file != NULL && o.pin.value != NULL) {
        tool_error("give --pin or --pin-file, not both");
        goto out;
    }
    if (pin_file != NULL && tpin_from_file(&o.pin, pin_file) < 0) {
        status = TOOL_FAILED;
        goto out;
    }
    if (pin_file == NULL && o.pin.value == NULL && tpin_from_env(&o.pin) < 0)
        goto out;
    if (tmod_load(&m, o.module) < 0) {
        status = TOOL_FAILED;
        goto out;
    }
    status = cmd->fn(&m, &o, nargs + 1, argv + optind);
    tmod_unload(&m);
out:
    tpin_free(&o.pin);
    if (fflush(stdout) != 0 && status == TOOL_OK)
        status = TOOL_FAILED;
    return status;
}
