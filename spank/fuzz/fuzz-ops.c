/* libFuzzer harness for spank/ops.c: the builder's channel as slurmstepd reads it, then the
   records as each task applies them. Built and run by spank/fuzz/run
   (clang -fsanitize=fuzzer,address,undefined); an input is the raw channel, "LENGTH\n" and
   the records. Checked, beyond the sanitizers' memory and undefined-behaviour errors:
   - ops_frame never calls a prefix of a whole frame (or of one still coming) whole or
     malformed: a read that stops early is never taken for the end;
   - a body ops_check accepts is applied by ops_apply without error, and the working directory
     it returns lies inside the body;
   - ops_apply on any body (checked or not) stays inside it.
   The environment is a plain array that is reallocated at every change, so that a pointer
   into it kept across a change is a use-after-free ASan sees. */

#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops.h"

struct env {
    char **vars;
    size_t count;
};

static char **env_list(void *ctx)
{
    return ((struct env *)ctx)->vars;
}

static size_t find(struct env *e, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < e->count; i++)
        if (!strncmp(e->vars[i], name, len) && e->vars[i][len] == '=')
            return i;
    return e->count;
}

/* A fresh array (and a fresh string for the variable set) at every change. */
static void replace(struct env *e, size_t skip, char *added)
{
    char **vars = calloc(e->count + 2, sizeof *vars);
    size_t n = 0;
    if (!vars)
        abort();
    for (size_t i = 0; i < e->count; i++) {
        if (i == skip) {
            free(e->vars[i]);
            continue;
        }
        vars[n++] = e->vars[i];
    }
    if (added)
        vars[n++] = added;
    free(e->vars);
    e->vars = vars;
    e->count = n;
}

static int env_set(void *ctx, const char *name, const char *value)
{
    struct env *e = ctx;
    char *var;
    if (asprintf(&var, "%s=%s", name, value) < 0)
        abort();
    replace(e, find(e, name), var);
    return 0;
}

static int env_unset(void *ctx, const char *name)
{
    struct env *e = ctx;
    replace(e, find(e, name), NULL);
    return 0;
}

static void env_free(struct env *e)
{
    for (size_t i = 0; i < e->count; i++)
        free(e->vars[i]);
    free(e->vars);
}

static void env_init(struct env *e)
{
    static const char *initial[] = {"PATH=/usr/bin:/usr/local/bin", "HOME=/home/u", "EMPTY=",
                                    "SLURM_PROCID=3", "SLURM_CPUS_ON_NODE=2", "TMPDIR=/tmp"};
    *e = (struct env){NULL, 0};
    for (size_t i = 0; i < sizeof initial / sizeof *initial; i++) {
        char *eq = strchr(initial[i], '=');
        char *name = strndup(initial[i], eq - initial[i]);
        env_set(e, name, eq + 1);
        free(name);
    }
}

static void apply(const char *body, size_t len, int checked)
{
    struct env e;
    env_init(&e);
    struct ops_env env = {&e, env_list, env_set, env_unset};
    const char *cwd;
    int quiet;
    char why[OPS_WHY];
    int r = ops_apply(body, len, &env, &cwd, &quiet, why);
    if (checked && r) {
        fprintf(stderr, "ops_apply failed on a checked body: %s\n", why);
        abort();
    }
    if (!r && strcmp(cwd, "/") && (cwd < body || cwd >= body + len))
        abort();
    if (!r && (quiet < -99 || quiet > 99))
        abort();
    env_free(&e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the channel in a buffer of its own size: ASan sees a read one byte past it */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    char why[OPS_WHY];
    size_t header = 0, body_len = 0;
    int whole = ops_frame(buf, size, &header, &body_len, why);
    if (whole == 1 && (header > size || body_len != size - header))
        abort();
    /* a shorter read that is whole, or malformed, means the whole input is malformed */
    for (size_t cut = 0; cut < size && cut < 64; cut++) {
        size_t h, b;
        int r = ops_frame(buf, cut, &h, &b, why);
        if (r != 0 && whole != -1)
            abort();
    }
    if (whole == 1) {
        int ok = ops_check(buf + header, body_len, why) == 0;
        apply(buf + header, body_len, ok);
    }
    /* the records alone, as if framing had been skipped: still bounded */
    int ok = ops_check(buf, size, why) == 0;
    apply(buf, size, ok);
    free(buf);
    return 0;
}
