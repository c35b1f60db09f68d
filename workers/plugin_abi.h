/*
 * plugin_abi.h — the C ABI of a native inference plugin (stages.infer.worker
 * "plugin", stages.infer.plugin.path), loaded with dlopen into each infer
 * process. Include this header from the plugin; it needs nothing else.
 *
 * The shared object exports one function:
 *
 *     const struct tpo_plugin_api *tpo_plugin_entry(void);
 *
 * returning a static table whose abi_version is TPO_PLUGIN_ABI_VERSION.
 *
 * Calls, all from the infer process's single thread:
 *
 *   init(options, &ctx)    once, options = stages.infer.plugin.options or "".
 *                          0, or a negative errno (the stage exits 78).
 *   generate(ctx, g, tok, arg)
 *                          makes progress on one request: calls tok(arg, text,
 *                          len) once per token (any bytes, len >= 1). If tok
 *                          returns non-zero, stop and return TPO_PLUGIN_MORE.
 *                          Returns TPO_PLUGIN_MORE (call again at g->next_ns,
 *                          0 = soon), TPO_PLUGIN_STOP or TPO_PLUGIN_LENGTH (the
 *                          answer is complete), or a negative value: failed,
 *                          with g->err_status (HTTP status, 0 = 500) and
 *                          g->err_msg. Return within a few milliseconds: other
 *                          requests of the lane wait meanwhile. g->state is
 *                          the plugin's (NULL at the first call).
 *   cancel(ctx, g)         exactly once per request that generate() saw,
 *                          finished or not: release g->state.
 *   fini(ctx)              once, at exit.
 *
 * A plugin runs inside the infer process: if it crashes, the process dies
 * and is restarted; requests it had not answered yet are retried, those
 * that had streamed tokens end with an error, and a request in flight
 * during two crashes (restart.quarantine_after) is quarantined.
 */
#ifndef TPO_PLUGIN_ABI_H
#define TPO_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#define TPO_PLUGIN_ABI_VERSION 1
#define TPO_PLUGIN_ENTRY       "tpo_plugin_entry"

enum {
	TPO_PLUGIN_MORE   = 0,
	TPO_PLUGIN_STOP   = 1,
	TPO_PLUGIN_LENGTH = 2,
};

struct tpo_plugin_gen {
	uint64_t    req_id;
	const char *prompt;          /* not NUL-terminated */
	size_t      prompt_len;
	uint32_t    max_tokens;      /* 0: the plugin's default */
	uint32_t    reserved;
	uint64_t    seed;
	const char *model;           /* NUL-terminated, may be "" */
	void       *state;           /* the plugin's per-request data */
	uint64_t    next_ns;         /* out: CLOCK_MONOTONIC time to call again */
	int         err_status;      /* out, with a negative return */
	char        err_msg[256];    /* out, NUL-terminated */
};

typedef int tpo_plugin_token_fn(void *arg, const char *text, size_t len);

struct tpo_plugin_api {
	uint32_t abi_version;        /* TPO_PLUGIN_ABI_VERSION */
	uint32_t reserved;
	const char *name;
	int  (*init)(const char *options, void **ctx);
	int  (*generate)(void *ctx, struct tpo_plugin_gen *g, tpo_plugin_token_fn *tok,
			 void *arg);
	void (*cancel)(void *ctx, struct tpo_plugin_gen *g);
	void (*fini)(void *ctx);
};

typedef const struct tpo_plugin_api *tpo_plugin_entry_fn(void);

#endif
