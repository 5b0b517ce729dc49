/* The builder's channel and the environment operations it carries (spank/ops.c).

   Nothing here knows Slurm: chjoin_spank.c gives `struct ops_env` over spank_setenv and
   friends, spank/fuzz/fuzz-ops.c over a plain array. The builder runs as the job's user with the
   job's environment (LD_PRELOAD included), so every byte of the channel is hostile until checked.

   Wire format (chjoin/builder.py writes it): "LENGTH\n" (decimal digits only, at most
   OPS_MAX), then exactly LENGTH bytes of records, nothing after them. A record is a one-letter
   kind and that kind's fields, every field NUL-terminated within the body:
     S NAME VALUE   set                     X NAME VALUE   set, expanding `$NAME` items
     U GLOB         unset matching names     P              chjoin's PATH rule
     D DIR          working directory        Q LEVEL        -q/-v level, -99..99
     R              ready: the last record, exactly once
   NAME is non-empty with no `=`; GLOB and DIR are non-empty. */

#ifndef CHJOIN_OPS_H
#define CHJOIN_OPS_H

#include <stddef.h>

#define OPS_MAX (4u << 20)        /* the largest body we accept: 4 MiB */
#define OPS_HEADER_MAX 8          /* "4194304\n" */
#define OPS_BUFFER_MAX (OPS_HEADER_MAX + OPS_MAX + 1)   /* one byte past any valid frame */
#define OPS_WHY 160               /* room for a reason */

struct op {
    char kind;                    /* S X U P D Q R */
    const char *name, *value;     /* the fields the kind has; NULL for the others */
};

/* The task's environment, as apply_ops needs it. */
struct ops_env {
    void *ctx;
    char **(*list)(void *ctx);    /* NAME=VALUE strings, NULL-terminated (may be NULL) */
    int (*set)(void *ctx, const char *name, const char *value);   /* 0 on success */
    int (*unset)(void *ctx, const char *name);
};

/* Whether buf[0..len) holds a whole frame: 1 (the body is buf + *header, *body_len bytes),
   0 (not yet: read more), -1 (never will be: `why` says what is wrong). */
int ops_frame(const char *buf, size_t len, size_t *header, size_t *body_len, char *why);

/* The record at body[*pos..len): 1 and *pos past it, 0 at the end, -1 malformed (`why`). */
int ops_next(const char *body, size_t len, size_t *pos, struct op *op, char *why);

/* Whether body[0..len) is a list of well-formed records ending with its only R: 0, or -1. */
int ops_check(const char *body, size_t len, char *why);

/* Apply the records in order to `env`, up to R. Returns 0 with *cwd (the D record, else "/",
   pointing into `body`) and *quiet (the Q record, else 0), or -1 with `why` (a malformed
   record or a failed set). */
int ops_apply(const char *body, size_t len, const struct ops_env *env, const char **cwd,
              int *quiet, char *why);

/* The value of `name` in env (pointing into its list), or NULL. */
const char *ops_getenv(const struct ops_env *env, const char *name);

#endif
