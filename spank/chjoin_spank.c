/* chjoin's SPANK plugin: `srun --chjoin-image=IMAGE [--chjoin-args="OPTIONS"] CMD`, and
   `srun --chjoin-name=NAME[:auto|create|exec] [--chjoin-image=IMAGE] CMD` for a named container
   (the first step of a job creates it on each node, later steps enter it: chjoin/named.py).

   One container per node per step, no Python per task. slurmstepd runs chjoin's builder (Python)
   once, in slurm_spank_user_init, before any task is forked: it builds the container exactly as
   `chjoin IMAGE` does and, from inside it, sends the per-task environment operations on fd 3,
   then "ready". We open its namespaces (inner user, mount, and the outer user namespace as the
   inner one's parent) and let it exit: the three descriptors alone keep the container. Every
   task inherits them at fork and enters, in slurm_spank_task_init, as the user, single-threaded:
   setns x3, environment, chdir, no_new_privs, the command looked up in the container's PATH.
   slurmstepd's copies are closed once the last task is forked; the container ends with its
   last task.

   Errors: the plugin is `optional` (an optional plugin's error codes are ignored, and a required
   one's break every srun on the cluster), so it never returns one. A failed build keeps the
   builder's message and exit code; local task 0 prints the message and every task exits with
   that code, so no task ever runs on the host. See shared/SPANK.md and slurm/README.md.

   The builder runs as the job's user with the job's environment: the user controls it (an
   LD_PRELOAD is enough), so we trust nothing it sends. Its channel is read by spank/ops.c
   (strict framing, at most 4 MiB, every record checked before any task starts); what it
   prints is kept up to 64 KiB. A malformed channel fails the build with our one line, and of a
   failed builder's output only its lines in chjoin's form reach the user. See docs/SECURITY.md.

   Plugstack arguments: builder=PATH (chjoin-spank-build) timeout=SECONDS (default 60). */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/nsfs.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <slurm/spank.h>

#include "ops.h"

SPANK_PLUGIN(chjoin, 1);

#ifndef CHJOIN_BUILDER
#define CHJOIN_BUILDER "/usr/local/bin/chjoin-spank-build"
#endif
#define MAX_NORMAL_STEP_ID 0xfffffff0u   /* slurm.h: batch, extern, interactive steps lie above */
#define EXIT_ERROR 31
#define EXIT_EXEC 49
#define MAX_OUTPUT (64 * 1024)            /* what we keep of the builder's stdout and stderr */
#define ERROR_LINE 1024                    /* one `chjoin[PID]: error: ...` line, at most */

/* Options: the last value given wins (SPANK keeps one per option). */
static char *image;          /* --chjoin-image; NULL, "" or "none": no container */
static char *chjoin_args;    /* --chjoin-args: chjoin's container options, one string */
static char *name;           /* --chjoin-name: NAME[:FLAG], a named container of the job */

/* Plugstack arguments. */
static const char *builder = CHJOIN_BUILDER;
static int timeout_s = 60;

/* The step's container, from user_init on. */
static int active;                              /* this step runs in a container */
static int ns_fd[3] = {-1, -1, -1};             /* outer user, inner user, mount: entered in this order */
static char *ops;                               /* the channel, then its checked records alone */
static size_t ops_len;
static char *output;                            /* what the builder printed: shown by local task 0 */
static size_t output_len;
static char *failure;                           /* a failed build: what local task 0 prints */
static size_t failure_len;
static int fail_code;                           /* nonzero: the build failed, tasks exit with it */
static uint32_t forked;                         /* tasks forked so far */

static int opt_image(int val, const char *optarg, int remote);
static int opt_args(int val, const char *optarg, int remote);
static int opt_name(int val, const char *optarg, int remote);

static struct spank_option options[] = {
    {"chjoin-image", "IMAGE",
     "run each task in chjoin's container of IMAGE (a directory or storage name), one "
     "container per node; \"none\" runs on the host", 1, 0, opt_image},
    {"chjoin-args", "\"OPTIONS\"",
     "chjoin's container options for --chjoin-image, quoted as one word: -b SRC[:DST], -W, "
     "-c DIR, --set-env, --unset-env, -u, -g, --home, -t, ...", 1, 0, opt_args},
    {"chjoin-name", "NAME[:FLAG]",
     "run each task in the job's named container NAME on its node, kept for later steps: "
     "FLAG create builds it (from --chjoin-image), exec enters it, auto (default) either",
     1, 0, opt_name},
};

static int set_option(char **where, const char *value)
{
    free(*where);
    *where = strdup(value ? value : "");
    return *where ? 0 : -1;
}

static int opt_image(int val, const char *optarg, int remote)
{
    return set_option(&image, optarg);
}

static int opt_args(int val, const char *optarg, int remote)
{
    return set_option(&chjoin_args, optarg);
}

static int opt_name(int val, const char *optarg, int remote)
{
    return set_option(&name, optarg);
}

/* The seconds of a plugstack argument: decimal digits only, 1 to MAX_TIMEOUT_S, else 0. */
#define MAX_TIMEOUT_S 86400
static int plugstack_seconds(const char *text)
{
    char *end;
    if (*text < '0' || *text > '9')       /* strtol would take a sign or blanks */
        return 0;
    errno = 0;
    long n = strtol(text, &end, 10);
    return errno || *end || n < 1 || n > MAX_TIMEOUT_S ? 0 : (int)n;
}

/* Register both options in every context (a spank_options[] table would not reach sbatch and
   salloc), and read the plugstack arguments. Never fails: see the errors note above. */
int slurm_spank_init(spank_t sp, int ac, char **av)
{
    for (int i = 0; i < ac; i++) {
        if (!strncmp(av[i], "builder=", 8))
            builder = av[i] + 8;
        else if (!strncmp(av[i], "timeout=", 8) && plugstack_seconds(av[i] + 8) > 0)
            timeout_s = plugstack_seconds(av[i] + 8);
        else if (!strncmp(av[i], "timeout=", 8))
            slurm_error("chjoin: plugstack argument %s: not 1 to %d seconds; timeout=%d",
                        av[i], MAX_TIMEOUT_S, timeout_s);
        else
            slurm_error("chjoin: unknown plugstack argument: %s", av[i]);
    }
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++)
        if (spank_option_register(sp, &options[i]) != ESPANK_SUCCESS)
            slurm_error("chjoin: can't register --%s", options[i].name);
    return 0;
}

/* Append `len` bytes to the growing buffer *buf (at most `max` bytes are kept: the rest is
   dropped); -1 when out of memory. *buf_len <= max always. */
static int append(char **buf, size_t *buf_len, const char *data, size_t len, size_t max)
{
    if (len > max - *buf_len)
        len = max - *buf_len;
    char *grown = realloc(*buf, *buf_len + len + 1);
    if (!grown)
        return -1;
    memcpy(grown + *buf_len, data, len);
    *buf_len += len;
    grown[*buf_len] = 0;
    *buf = grown;
    return 0;
}

/* Format chjoin's one error line, `chjoin[PID]: error: ...\n`, into `line` (1024 bytes, cut
 * to fit); returns its length. */
static int error_line(char *line, pid_t pid, const char *fmt, va_list ap)
{
    int n = snprintf(line, ERROR_LINE, "chjoin[%d]: error: ", (int)pid);
    n += vsnprintf(line + n, ERROR_LINE - n - 1, fmt, ap);
    if (n > ERROR_LINE - 2)
        n = ERROR_LINE - 2;
    line[n++] = '\n';
    return n;
}

/* The build failed: keep `code` and our one line in chjoin's form for the tasks to report
   (after what `failure` already holds: the builder's own lines). */
static void fail(int code, pid_t pid, const char *fmt, ...)
{
    char line[ERROR_LINE];
    va_list ap;
    va_start(ap, fmt);
    int n = error_line(line, pid, fmt, ap);
    va_end(ap);
    if (append(&failure, &failure_len, line, n, MAX_OUTPUT + sizeof line))
        failure_len = 0;                /* out of memory: tasks still exit with `code` */
    fail_code = code;
}

/* Whether `line` (len bytes, no newline) is in chjoin's form, `chjoin[DIGITS]: `. */
static int chjoin_form(const char *line, size_t len)
{
    size_t i = 7;
    if (len < 10 || memcmp(line, "chjoin[", 7))
        return 0;
    while (i < len && line[i] >= '0' && line[i] <= '9')
        i++;
    return i > 7 && len - i >= 3 && !memcmp(line + i, "]: ", 3);
}

/* The builder failed with its own exit code: keep, for the tasks, its lines in chjoin's form
   (warnings, then its error line), each cut to one error line's length and with control bytes
   shown as '?'. Whatever else it printed (a hostile builder's flood) is dropped. Returns
   whether an error line was among them. */
static int keep_chjoin_lines(void)
{
    int found_error = 0;
    for (size_t at = 0; at < output_len;) {
        const char *line = output + at, *nl = memchr(line, '\n', output_len - at);
        size_t len = nl ? (size_t)(nl - line) : output_len - at;
        at += len + (nl != NULL);
        if (!chjoin_form(line, len))
            continue;
        char copy[ERROR_LINE];
        size_t n = len < sizeof copy - 1 ? len : sizeof copy - 1;
        for (size_t i = 0; i < n; i++)
            copy[i] = (unsigned char)line[i] < 0x20 && line[i] != '\t' ? '?' : line[i];
        copy[n++] = '\n';
        found_error |= memmem(copy, n, "]: error: ", 10) != NULL;
        if (append(&failure, &failure_len, copy, n, MAX_OUTPUT))
            break;
    }
    return found_error;
}

/* The channel so far: 1 once it holds a whole, well-formed frame (then `ops` holds its
   records alone), 0 to read on, -1 never (`why` says what is wrong). */
static int channel_ready(char *why)
{
    size_t header, length;
    int r = ops_frame(ops, ops_len, &header, &length, why);
    if (r <= 0)
        return r;
    if (ops_check(ops + header, length, why))
        return -1;
    memmove(ops, ops + header, length);
    ops_len = length;
    return 1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* In the forked child: become the job user for good, with a clean signal state, the channel on
   fd 3 and `out` on stdout and stderr, then exec the builder. Async-signal-safe calls only:
   slurmstepd is multi-threaded. */
static void exec_builder(int channel, int out, uid_t uid, gid_t gid, char **argv, char **env)
{
    static const char msg[] = "chjoin: error: can't start the builder\n";
    sigset_t none;
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    int null = open("/dev/null", O_RDONLY);

    if (null < 0 || dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0 ||
        dup2(channel, 3) < 0)
        _exit(EXIT_ERROR);
    close_range(4, ~0U, 0);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        sigaction(sig, &dfl, NULL);
    if (setresgid(gid, gid, gid) || setresuid(uid, uid, uid) ||
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0))
        _exit(EXIT_ERROR);
    execve(argv[0], argv, env);
    write(2, msg, sizeof msg - 1);
    _exit(EXIT_ERROR);
}

/* Wait for the builder to exit, killing it at `deadline`; returns its wait status, or
   NOT_REAPED when it is still there REAP_GRACE s after SIGKILL (stuck in the kernel: a request
   to a file system that never answers). slurmstepd never waits for it without a deadline. */
#define REAP_GRACE 5.0
#define NOT_REAPED (-1)
#define WAIT_FAILED (-2)          /* waitpid itself failed: its errno is kept in reap_errno */
static int reap_errno;
#define STUCK "; the builder did not end 5 s after SIGKILL (stuck in the kernel on a file " \
              "system that does not answer?)"
static int reap(pid_t pid, double deadline)
{
    int status = NOT_REAPED, killed = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, WNOHANG)) == 0) {
        if (!killed && now() > deadline) {
            kill(pid, SIGKILL);
            killed = 1, deadline = now() + REAP_GRACE;
        } else if (killed && now() > deadline)
            return NOT_REAPED;
        usleep(2000);
    }
    if (r == pid)
        return status;
    reap_errno = errno;
    return WAIT_FAILED;
}

/* Read what is ready on `fd` into the output buffer; -1 at end of file. */
static int drain(int fd)
{
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0)
        append(&output, &output_len, buf, n, MAX_OUTPUT);
    return n > 0 || (n < 0 && errno == EINTR) ? 0 : -1;
}

/* The builder's argv. A Python script (the usual case) is run by its interpreter with -I -S:
   the job's PYTHON* variables must not reach chjoin, and `site` (with the .pth hooks a venv may
   hold) costs every step milliseconds; the builder finds its own site-packages. */
static int has_image(void);

static void builder_argv(char *argv[8], char *interpreter, size_t size)
{
    int n = 0, fd = open(builder, O_RDONLY | O_CLOEXEC);
    ssize_t len = fd >= 0 ? read(fd, interpreter, size - 1) : -1;
    if (fd >= 0)
        close(fd);
    interpreter[len > 0 ? len : 0] = 0;
    interpreter[strcspn(interpreter, "\n")] = 0;
    char *base = strrchr(interpreter, '/');
    if (!strncmp(interpreter, "#!/", 3) && !strchr(interpreter, ' ') && base &&
        !strncmp(base + 1, "python", 6)) {
        argv[n++] = interpreter + 2;
        argv[n++] = "-I";
        argv[n++] = "-S";
    }
    argv[n++] = (char *)builder;
    argv[n++] = has_image() ? image : "";
    argv[n++] = chjoin_args ? chjoin_args : "";
    if (name && *name)
        argv[n++] = name;
    argv[n] = NULL;
}

/* Run the builder and take the container it built: the namespace descriptors and the
   environment operations, or the failure (message and exit code). */
static void build(spank_t sp)
{
    uid_t uid;
    gid_t gid;
    char **env;
    int sv[2], out[2];
    char *argv[8], interpreter[256];

    builder_argv(argv, interpreter, sizeof interpreter);

    if (spank_get_item(sp, S_JOB_UID, &uid) || spank_get_item(sp, S_JOB_GID, &gid) ||
        spank_get_item(sp, S_JOB_ENV, &env))
        return fail(EXIT_ERROR, getpid(), "can't get the job's uid, gid and environment");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
        return fail(EXIT_ERROR, getpid(), "can't make a socket pair: %s", strerror(errno));
    if (pipe2(out, O_CLOEXEC)) {
        close(sv[0]), close(sv[1]);
        return fail(EXIT_ERROR, getpid(), "can't make a pipe: %s", strerror(errno));
    }
    double deadline = now() + timeout_s;
    pid_t pid = fork();
    if (pid == 0)
        exec_builder(sv[1], out[1], uid, gid, argv, env);
    close(sv[1]), close(out[1]);
    if (pid < 0) {
        close(sv[0]), close(out[0]);
        return fail(EXIT_ERROR, getpid(), "can't fork the builder: %s", strerror(errno));
    }

    /* Until the "R" record (ready), EOF on the channel (failed), a malformed channel or the
       deadline. */
    int ready = 0, channel_open = 1, out_open = 1, malformed = 0;
    char why[OPS_WHY] = "";
    while (!ready && !malformed && channel_open) {
        struct pollfd fds[2] = {{sv[0], POLLIN, 0}, {out[0], out_open ? POLLIN : 0, 0}};
        int left = (int)((deadline - now()) * 1000);
        if (left <= 0)
            break;
        if (poll(fds, 2, left) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[1].revents && drain(out[0]) < 0)
            out_open = 0;
        if (fds[0].revents) {
            char buf[4096];
            ssize_t n = read(sv[0], buf, sizeof buf);
            if (n > 0) {
                if (append(&ops, &ops_len, buf, n, OPS_BUFFER_MAX)) {
                    snprintf(why, sizeof why, "out of memory");
                    malformed = 1;
                } else if ((ready = channel_ready(why)) < 0) {
                    ready = 0, malformed = 1;
                }
            } else if (n == 0 || errno != EINTR) {
                channel_open = 0;
            }
        }
    }
    if (ready) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
        ns_fd[1] = open(path, O_RDONLY | O_CLOEXEC);
        snprintf(path, sizeof path, "/proc/%d/ns/mnt", (int)pid);
        ns_fd[2] = open(path, O_RDONLY | O_CLOEXEC);
        if (ns_fd[1] >= 0)
            ns_fd[0] = ioctl(ns_fd[1], NS_GET_PARENT);   /* a new descriptor, close-on-exec */
    }
    close(sv[0]);             /* the builder's cue to exit */
    int status = reap(pid, (ready || !channel_open) && !malformed ? deadline : 0);
    while (out_open) {        /* what is left in the pipe; never wait for a writer's EOF */
        struct pollfd fd = {out[0], POLLIN, 0};
        if (poll(&fd, 1, 0) <= 0 || drain(out[0]) < 0)
            out_open = 0;
    }
    close(out[0]);

    if (malformed)
        fail(EXIT_ERROR, pid, "the builder sent a malformed channel: %s", why);
    else if (!ready && channel_open)
        fail(EXIT_ERROR, pid, "building the container took longer than timeout=%d s "
             "(plugstack.conf)%s", timeout_s, status == NOT_REAPED ? STUCK : "");
    else if (!ready && status == NOT_REAPED)
        fail(EXIT_ERROR, pid, "%s", STUCK + 2);
    else if (!ready && status == WAIT_FAILED)
        fail(EXIT_ERROR, pid, "can't wait for the builder: %s", strerror(reap_errno));
    else if (!ready && WIFEXITED(status) && WEXITSTATUS(status)) {
        if (keep_chjoin_lines())
            fail_code = WEXITSTATUS(status);     /* its own error line is in `failure` */
        else
            fail(WEXITSTATUS(status), pid, "the builder exited with code %d without an "
                 "error line", WEXITSTATUS(status));
    } else if (!ready && WIFSIGNALED(status))
        fail(EXIT_ERROR, pid, "the builder was killed by signal %d", WTERMSIG(status));
    else if (!ready)
        fail(EXIT_ERROR, pid, "the builder exited without building the container");
    else if (ns_fd[0] < 0 || ns_fd[1] < 0 || ns_fd[2] < 0)
        fail(EXIT_ERROR, pid, "can't open the container's namespaces: %s", strerror(errno));
}

static int has_image(void)
{
    return image && *image && strcmp(image, "none");
}

/* A container for this step: an image, or a name (whose container may be running already);
   --chjoin-image=none opts a step out of both. */
static int wanted(void)
{
    if (image && !strcmp(image, "none"))
        return 0;
    return has_image() || (name && *name);
}

static void close_namespaces(void)
{
    for (int i = 0; i < 3; i++)
        if (ns_fd[i] >= 0)
            close(ns_fd[i]), ns_fd[i] = -1;
}

/* In slurmstepd, before any task is forked: build this node's container for a normal step
   (a batch script, the extern step and an interactive step stay on the host). */
int slurm_spank_user_init(spank_t sp, int ac, char **av)
{
    uint32_t step;
    if (!spank_remote(sp) || !wanted())
        return 0;
    if (spank_get_item(sp, S_JOB_STEPID, &step) || step > MAX_NORMAL_STEP_ID)
        return 0;
    active = 1;
    build(sp);
    return 0;
}

/* slurmstepd's descriptors are no longer needed once every local task holds its own. */
int slurm_spank_task_post_fork(spank_t sp, int ac, char **av)
{
    uint32_t tasks;
    if (active && spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &tasks) == ESPANK_SUCCESS &&
        ++forked >= tasks)
        close_namespaces();
    return 0;
}

int slurm_spank_exit(spank_t sp, int ac, char **av)
{
    close_namespaces();
    return 0;
}

/* --- in each task ------------------------------------------------------------------------ */

/* Print `fmt` as chjoin's one error line and end the task with `code`. */
static void die(int code, const char *fmt, ...)
{
    char line[ERROR_LINE];
    va_list ap;
    va_start(ap, fmt);
    int n = error_line(line, getpid(), fmt, ap);
    va_end(ap);
    write(2, line, n);
    _exit(code);
}

/* The task's environment, for spank/ops.c. */
static char **env_list(void *sp)
{
    char **env;
    return spank_get_item(sp, S_JOB_ENV, &env) == ESPANK_SUCCESS ? env : NULL;
}

static int env_set(void *sp, const char *name, const char *value)
{
    return spank_setenv(sp, name, value, 1) != ESPANK_SUCCESS;
}

static int env_unset(void *sp, const char *name)
{
    return spank_unsetenv(sp, name) != ESPANK_SUCCESS;
}

/* The task's current value of `name`, copied (NULL if unset). */
static char *task_getenv(spank_t sp, const char *name)
{
    struct ops_env env = {sp, env_list, env_set, env_unset};
    const char *value = ops_getenv(&env, name);
    return value ? strdup(value) : NULL;
}

static void task_setenv(spank_t sp, const char *name, const char *value)
{
    if (env_set(sp, name, value))
        die(EXIT_ERROR, "can't set %s", name);
}

/* Whether `path` is a file we may execute; sets errno when not. */
static int executable(const char *path)
{
    struct stat st;
    if (stat(path, &st))
        return 0;
    if (S_ISDIR(st.st_mode))
        return errno = EACCES, 0;
    return !access(path, X_OK);
}

/* execvp's search, done before slurmstepd's: a command the container lacks fails as chjoin's
   does (exit 49), not as a missing file on the host. EACCES wins over ENOENT, as in execvp. */
static void check_command(spank_t sp)
{
    int argc;
    char **argv;
    if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1)
        return;
    const char *cmd = argv[0];
    if (strchr(cmd, '/')) {
        if (!executable(cmd))
            die(EXIT_EXEC, "can't exec: %s: %s", cmd, strerror(errno));
        return;
    }
    char *path = task_getenv(sp, "PATH");
    char *rest = path ? path : strdup("/bin:/usr/bin"), *all = rest, *dir;
    int err = ENOENT;
    while ((dir = strsep(&rest, ":"))) {
        char *full;
        if (asprintf(&full, "%s/%s", *dir ? dir : ".", cmd) < 0)
            continue;
        int ok = executable(full);
        free(full);
        if (ok)
            return free(all);
        if (errno == EACCES)
            err = EACCES;
    }
    free(all);
    die(EXIT_EXEC, "can't exec: %s: %s", cmd, strerror(err));
}

/* In each task, as the user, before TaskProlog and exec: enter the container, or fail as the
   build failed. The outer user namespace first: there we hold every capability over the inner
   one, whose mount namespace we enter last (see slurm/README.md for why this order). */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
    static const int types[3] = {CLONE_NEWUSER, CLONE_NEWUSER, CLONE_NEWNS};
    static const char *names[3] = {"outer user", "inner user", "mount"};
    int task = -1, quiet = 0;

    if (!active)
        return 0;
    spank_get_item(sp, S_TASK_ID, &task);
    if (fail_code) {
        close_namespaces();
        if (task == 0 && failure_len)
            write(2, failure, failure_len);
        _exit(fail_code);
    }
    for (int i = 0; i < 3; i++)
        if (setns(ns_fd[i], types[i]))
            die(EXIT_ERROR, "can't enter the container: setns(%s namespace): %s", names[i],
                strerror(errno));
    close_namespaces();
    if (task == 0 && output_len)
        write(2, output, output_len);       /* the builder's warnings, once per node */
    /* checked in user_init; ops_apply checks each record again as it goes */
    struct ops_env env = {sp, env_list, env_set, env_unset};
    const char *cwd;
    char why[OPS_WHY];
    if (ops_apply(ops, ops_len, &env, &cwd, &quiet, why))
        die(EXIT_ERROR, "the builder's operations: %s", why);
    char *tmpdir = task_getenv(sp, "TMPDIR");
    if (!tmpdir)
        task_setenv(sp, "TMPDIR", "/tmp");  /* slurmstepd sets it on task 0 only: say it for all */
    free(tmpdir);
    if (chdir(cwd))
        die(EXIT_ERROR, "can't cd to %s: %s", cwd, strerror(errno));
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die(EXIT_ERROR, "can't set no_new_privs: %s", strerror(errno));
    check_command(sp);
    for (int fd = 1; fd <= 2; fd++)
        if (quiet <= (fd == 1 ? -1 : -3)) {
            int null = open("/dev/null", O_WRONLY);
            if (null >= 0)
                dup2(null, fd), close(null);
        }
    return 0;
}
