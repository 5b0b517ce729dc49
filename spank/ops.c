/* The builder's channel: strict framing, bounded records, and chjoin's environment rules
   applied per task (see ops.h for the format). No Slurm here: the plugin and the fuzzer both
   link this file. Every length is compared by subtraction from a larger known one, never by
   an addition that could wrap; every field is found with memchr within the body. */

#define _GNU_SOURCE
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static int bad(char *why, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, OPS_WHY, fmt, ap);
    va_end(ap);
    return -1;
}

int ops_frame(const char *buf, size_t len, size_t *header, size_t *body_len, char *why)
{
    size_t scan = len < OPS_HEADER_MAX ? len : OPS_HEADER_MAX;
    const char *newline = scan ? memchr(buf, '\n', scan) : NULL;
    if (!newline && len < OPS_HEADER_MAX)
        return 0;
    size_t digits = newline ? (size_t)(newline - buf) : OPS_HEADER_MAX;
    for (size_t i = 0; i < digits; i++)
        if (buf[i] < '0' || buf[i] > '9')
            return bad(why, newline ? "a length that is not decimal digits" :
                       "no length in its first %d bytes", OPS_HEADER_MAX);
    if (!newline)                        /* 8 digits and more */
        return bad(why, "a length over %u bytes", OPS_MAX);
    if (digits == 0)
        return bad(why, "an empty length");
    char text[OPS_HEADER_MAX + 1], *end;
    memcpy(text, buf, digits);
    text[digits] = 0;
    errno = 0;
    unsigned long length = strtoul(text, &end, 10);
    if (errno == ERANGE || *end || length > OPS_MAX)
        return bad(why, "a length over %u bytes", OPS_MAX);
    *header = digits + 1;
    size_t after = len - *header;          /* len >= *header: the newline is inside */
    if (after < length)
        return 0;
    if (after > length)
        return bad(why, "%zu bytes after the operations", after - (size_t)length);
    *body_len = length;
    return 1;
}

/* The NUL-terminated field at body[*pos..len), or NULL (no NUL before the end). */
static const char *field(const char *body, size_t len, size_t *pos)
{
    if (*pos >= len)
        return NULL;
    const char *start = body + *pos, *nul = memchr(start, 0, len - *pos);
    if (!nul)
        return NULL;
    *pos += (size_t)(nul - start) + 1;
    return start;
}

/* How many fields after the kind each kind has; -1 for no kind. */
static int fields_of(char kind)
{
    switch (kind) {
    case 'S': case 'X': return 2;
    case 'U': case 'D': case 'Q': return 1;
    case 'P': case 'R': return 0;
    default: return -1;
    }
}

static int level_ok(const char *text)
{
    const char *digits = text + (*text == '-');
    size_t n = strlen(digits);
    return n >= 1 && n <= 2 && strspn(digits, "0123456789") == n;
}

int ops_next(const char *body, size_t len, size_t *pos, struct op *op, char *why)
{
    if (*pos >= len)
        return 0;
    size_t at = *pos;
    const char *kind = field(body, len, pos);
    if (!kind)
        return bad(why, "a record not NUL-terminated at byte %zu", at);
    int n = kind[0] && !kind[1] ? fields_of(kind[0]) : -1;   /* kind[0] == 0: kind[1] is past it */
    if (n < 0)
        return bad(why, "an unknown record at byte %zu", at);
    const char *f[2] = {NULL, NULL};
    for (int i = 0; i < n; i++)
        if (!(f[i] = field(body, len, pos)))
            return bad(why, "a %c record with fewer than %d fields at byte %zu", kind[0], n, at);
    *op = (struct op){kind[0], NULL, NULL};
    switch (kind[0]) {
    case 'S': case 'X':
        if (!*f[0] || strchr(f[0], '='))
            return bad(why, "a %c record whose name is empty or holds '=' at byte %zu",
                       kind[0], at);
        op->name = f[0], op->value = f[1];
        break;
    case 'U': case 'D':
        if (!*f[0])
            return bad(why, "a %c record with an empty field at byte %zu", kind[0], at);
        op->value = f[0];
        break;
    case 'Q':
        if (!level_ok(f[0]))
            return bad(why, "a Q record whose level is not -99..99 at byte %zu", at);
        op->value = f[0];
        break;
    }
    return 1;
}

int ops_check(const char *body, size_t len, char *why)
{
    struct op op;
    size_t pos = 0;
    int r;
    while ((r = ops_next(body, len, &pos, &op, why)) > 0)
        if (op.kind == 'R')
            return pos == len ? 0 : bad(why, "records after the R record");
    return r < 0 ? -1 : bad(why, "no R record at the end");
}

const char *ops_getenv(const struct ops_env *env, const char *name)
{
    char **list = env->list(env->ctx);
    size_t len = strlen(name);
    for (; list && *list; list++)
        if (!strncmp(*list, name, len) && (*list)[len] == '=')
            return *list + len + 1;
    return NULL;
}

/* A growing string; `failed` once an allocation failed. */
struct text {
    char *data;
    size_t len;
    int failed;
};

static void add(struct text *t, const char *s, size_t n)
{
    if (t->failed)
        return;
    char *grown = realloc(t->data, t->len + n + 1);   /* both bounded by the 4 MiB body */
    if (!grown) {
        t->failed = 1;
        return;
    }
    memcpy(grown + t->len, s, n);
    t->len += n;
    grown[t->len] = 0;
    t->data = grown;
}

/* chjoin's expansion: `$NAME` items of a colon-separated value are replaced by the variable's
   value; items that expand to nothing are dropped; a lone `$` stays. NULL: out of memory. */
static char *expand(const struct ops_env *env, const char *value)
{
    struct text out = {NULL, 0, 0};
    int first = 1;
    add(&out, "", 0);
    for (const char *item = value;;) {
        size_t n = strcspn(item, ":");
        const char *text = item;
        if (item[0] == '$' && n > 1) {
            char *name = strndup(item + 1, n - 1);
            text = name ? ops_getenv(env, name) : NULL;
            free(name);
            if (!name)
                out.failed = 1;
        }
        size_t text_len = text == item ? n : text ? strlen(text) : 0;
        if (text_len || text == item) {
            if (!first)
                add(&out, ":", 1);
            add(&out, text, text_len);
            first = 0;
        }
        if (!item[n])
            break;
        item += n + 1;
    }
    if (out.failed)
        return free(out.data), NULL;
    return out.data;
}

/* Unset every variable whose name matches extglob `pattern`; -1: out of memory. */
static int unset_matching(const struct ops_env *env, const char *pattern)
{
    char **list = env->list(env->ctx);
    size_t count = 0;
    while (list && list[count])
        count++;
    char **names = calloc(count + 1, sizeof *names);
    if (!names)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < count; i++) {
        char *name = strndup(list[i], strcspn(list[i], "="));
        if (name && !fnmatch(pattern, name, FNM_EXTMATCH))
            names[k++] = name;
        else
            free(name);
    }
    for (size_t i = 0; i < k; i++) {
        env->unset(env->ctx, names[i]);
        free(names[i]);
    }
    free(names);
    return 0;
}

/* chjoin's PATH rule: `:/bin` is appended unless PATH already has `/bin` (nothing if unset). */
static int path_rule(const struct ops_env *env)
{
    const char *path = ops_getenv(env, "PATH");
    if (!path)
        return 0;
    for (const char *item = path;;) {
        size_t n = strcspn(item, ":");
        if (n == 4 && !strncmp(item, "/bin", 4))
            return 0;
        if (!item[n])
            break;
        item += n + 1;
    }
    char *longer;
    if (asprintf(&longer, "%s:/bin", path) < 0)
        return -1;
    int r = env->set(env->ctx, "PATH", longer);
    free(longer);
    return r;
}

int ops_apply(const char *body, size_t len, const struct ops_env *env, const char **cwd,
              int *quiet, char *why)
{
    struct op op;
    size_t pos = 0;
    int r;
    *cwd = "/";
    *quiet = 0;
    while ((r = ops_next(body, len, &pos, &op, why)) > 0) {
        char *value;
        switch (op.kind) {
        case 'S':
            if (env->set(env->ctx, op.name, op.value))
                return bad(why, "can't set %.64s", op.name);
            break;
        case 'X':
            if (!(value = expand(env, op.value)))
                return bad(why, "can't set %.64s: out of memory", op.name);
            r = env->set(env->ctx, op.name, value);
            free(value);
            if (r)
                return bad(why, "can't set %.64s", op.name);
            break;
        case 'U':
            if (unset_matching(env, op.value))
                return bad(why, "can't unset %.64s: out of memory", op.value);
            break;
        case 'P':
            if (path_rule(env))
                return bad(why, "can't set PATH");
            break;
        case 'D':
            *cwd = op.value;
            break;
        case 'Q':
            *quiet = atoi(op.value);         /* -99..99: checked by ops_next */
            break;
        case 'R':
            return 0;
        }
    }
    return r < 0 ? -1 : bad(why, "no R record at the end");
}
