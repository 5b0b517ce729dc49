/* An LD_PRELOAD shim that turns chjoin's SPANK builder hostile, as any job's user can: the
   builder runs as the user with the job's environment. Before Python starts, in the builder
   only (its argv names chjoin-spank-build and fd 3 is the plugin's socket), it sends on the
   channel what $CHJOIN_HOSTILE names, and prints or exits as that case says. Built by
   tests/security/test_hostile_builder.py. */

#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void send_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n <= 0)
            return;
        data += n, len -= n;
    }
}

#define SEND(text) send_all(3, text, sizeof text - 1)

static void flood(int fd, size_t total, char byte)
{
    static char block[65536];
    memset(block, byte, sizeof block);
    for (size_t sent = 0; sent < total; sent += sizeof block)
        send_all(fd, block, sizeof block);
}

/* What the plugin does next is its business: wait until it closes the channel (or kills us). */
static void wait_for_eof(void)
{
    char buf[4096];
    while (read(3, buf, sizeof buf) > 0)
        ;
    _exit(0);
}

static int is_builder(void)
{
    char cmdline[4096];
    struct stat st;
    int fd = open("/proc/self/cmdline", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof cmdline - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0 || fstat(3, &st) || !S_ISSOCK(st.st_mode))
        return 0;
    for (ssize_t i = 0; i < n; i++)
        if (!cmdline[i])
            cmdline[i] = ' ';
    cmdline[n] = 0;
    return strstr(cmdline, "chjoin-spank-build") != NULL;
}

__attribute__((constructor)) static void hostile(void)
{
    const char *c = getenv("CHJOIN_HOSTILE");
    if (!c || !is_builder())
        return;
    if (!strcmp(c, "overlong-length"))
        SEND("18446744073709551615\nS\0A\0B\0R\0");
    else if (!strcmp(c, "over-maximum"))
        SEND("4194305\nR\0");
    else if (!strcmp(c, "signed-length"))
        SEND("-1\nR\0");
    else if (!strcmp(c, "no-length"))
        SEND("S\0A\0B\0R\0");
    else if (!strcmp(c, "missing-nul"))
        SEND("12\nS\0NAME\0VALUE");
    else if (!strcmp(c, "too-few-fields"))
        SEND("4\nS\0A\0");
    else if (!strcmp(c, "extra-field"))
        SEND("6\nP\0x\0R\0");
    else if (!strcmp(c, "after-ready"))
        SEND("8\nR\0S\0A\0B\0");
    else if (!strcmp(c, "no-ready"))
        SEND("6\nS\0A\0B\0");
    else if (!strcmp(c, "trailing"))
        SEND("2\nR\0S\0A\0B\0");
    else if (!strcmp(c, "huge-channel")) {
        SEND("4194304\n");
        flood(3, 16 << 20, 'A');
    } else if (!strcmp(c, "huge-output")) {
        flood(1, 32 << 20, 'x');
        flood(2, 32 << 20, '\n');
        _exit(31);
    } else if (!strcmp(c, "stuck-in-kernel")) {
        struct stat st;              /* on a file system that never answers: SIGKILL can't end it */
        stat(getenv("CHJOIN_HOSTILE_PATH"), &st);
    } else
        return;
    wait_for_eof();
}
