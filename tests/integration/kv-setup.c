#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kv-setup.h"
#include "p11.h"
#include "test.h"

#define PYTHON "/usr/bin/python3"

static pid_t emu_pid, emu_owner;
static int emu_out = -1; /* its stdout, open while it runs */
static char emu_state[512], emu_url[256], emu_ca[512], emu_imds[128];

static void kv_stop(void)
{
    int st;

    if (emu_pid <= 0 || getpid() != emu_owner)
        return;
    kill(emu_pid, SIGTERM);
    waitpid(emu_pid, &st, 0);
    emu_pid = 0;
    close(emu_out);
}

static const char *kvemu_path(void)
{
    static char path[512];
    const char *src = getenv("top_srcdir");

    snprintf(path, sizeof(path), "%s/tests/kvemu/kvemu", src ? src : ".");
    return path;
}

/* One KEY=VALUE line of the emulator's start-up output. */
static void take(const char *line)
{
    static const struct {
        const char *key;
        char *out;
        size_t size;
    } keys[] = {
        {"KVEMU_URL_KVEMU=", emu_url, sizeof(emu_url)},
        {"KVEMU_CA=", emu_ca, sizeof(emu_ca)},
        {"KVEMU_IMDS=", emu_imds, sizeof(emu_imds)},
    };
    size_t i, n;

    for (i = 0; i < CMK_ARRAY_SIZE(keys); i++) {
        n = strlen(keys[i].key);
        if (strncmp(line, keys[i].key, n) == 0)
            snprintf(keys[i].out, keys[i].size, "%s", line + n);
    }
}

/* Reads the start-up lines until KVEMU_READY (90 s at most, as
 * kvtest.py waits). */
static void read_ready(int fd)
{
    char buf[8192], *nl, *line;
    size_t used = 0;
    time_t deadline = time(NULL) + 90;
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t r;

    for (;;) {
        if (time(NULL) > deadline || poll(&p, 1, 1000) < 0)
            test_bail("kvemu did not start (see %s/kvemu.stderr)",
                      p11_tmpdir());
        if (!(p.revents & (POLLIN | POLLHUP)))
            continue;
        r = read(fd, buf + used, sizeof(buf) - 1 - used);
        if (r <= 0)
            test_bail("kvemu exited (see %s/kvemu.stderr)", p11_tmpdir());
        used += (size_t)r;
        buf[used] = '\0';
        line = buf;
        while ((nl = strchr(line, '\n')) != NULL) {
            *nl = '\0';
            if (strcmp(line, "KVEMU_READY=1") == 0)
                return;
            take(line);
            line = nl + 1;
        }
        used = strlen(line);
        memmove(buf, line, used + 1);
        if (used == sizeof(buf) - 1)
            test_bail("kvemu: a start-up line too long");
    }
}

void kv_start(void)
{
    char errpath[600];
    int fds[2], err;

    snprintf(emu_state, sizeof(emu_state), "%s/kvemu-state", p11_tmpdir());
    snprintf(errpath, sizeof(errpath), "%s/kvemu.stderr", p11_tmpdir());
    if (pipe(fds) != 0)
        test_bail("pipe: %s", strerror(errno));
    fflush(stdout);
    emu_pid = fork();
    if (emu_pid < 0)
        test_bail("fork: %s", strerror(errno));
    if (emu_pid == 0) {
        err = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fds[1], 1);
        if (err >= 0)
            dup2(err, 2);
        close(fds[0]);
        close(fds[1]);
        execl(PYTHON, PYTHON, kvemu_path(), "--port", "0", "--state-dir",
              emu_state, "--exit-with-parent", (char *)NULL);
        _exit(127);
    }
    emu_owner = getpid();
    atexit(kv_stop);
    close(fds[1]);
    emu_out = fds[0];
    read_ready(emu_out);
    if (emu_url[0] == '\0' || emu_ca[0] == '\0' || emu_imds[0] == '\0')
        test_bail("kvemu: no vault URL, CA or IMDS endpoint");
}

void kv_admin(const char *command)
{
    char cmd[2048];
    int st;

    snprintf(cmd, sizeof(cmd), "%s %s admin --state-dir %s %s >/dev/null",
             PYTHON, kvemu_path(), emu_state, command);
    fflush(stdout);
    st = system(cmd);
    if (st != 0)
        test_bail("kvemu admin %s failed", command);
}

bool kv_admin_says(const char *command, const char *text)
{
    char cmd[2048], buf[4096];
    size_t n;
    FILE *f;
    bool found = false;

    snprintf(cmd, sizeof(cmd), "%s %s admin --state-dir %s %s", PYTHON,
             kvemu_path(), emu_state, command);
    fflush(stdout);
    f = popen(cmd, "r");
    if (f == NULL)
        test_bail("kvemu admin %s: %s", command, strerror(errno));
    while ((n = fread(buf, 1, sizeof(buf) - 1, f)) > 0) {
        buf[n] = '\0';
        found = found || strstr(buf, text) != NULL;
    }
    if (pclose(f) != 0)
        test_bail("kvemu admin %s failed", command);
    return found;
}

char *kv_conf(const char *extra)
{
    char text[3072], cwd[1024];

    /* Token secret keys stay in the test's directory (an absolute path). */
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        test_bail("getcwd failed");
    snprintf(text, sizeof(text),
             "[cmkp11]\nlog-level = error\n\n"
             "[token kv]\nbackend = keyvault\nvault-url = %s\n"
             "ca-file = %s\nauth = managed-identity\nimds-endpoint = %s\n"
             "state-dir = %s/%s/secret-keys\n%s",
             emu_url, emu_ca, emu_imds, cwd, p11_tmpdir(), extra ? extra : "");
    return p11_write_file("cmkp11.conf", text);
}
