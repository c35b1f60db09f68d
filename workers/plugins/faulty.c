/*
 * faulty.c — a deliberately crashing plugin for tests of the infer stage's
 * in-flight journal. Answers "tok0 tok1 ..." (8 tokens, or max_tokens), but:
 *
 *   [[plugin:segv]]           segfaults before its first token
 *   [[plugin:segv_after=N]]   segfaults after N tokens
 *   [[plugin:fail]]           returns an error (status 503) instead
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/plugin_abi.h"

struct st {
	unsigned sent;
	long segv_after;               /* -1 none */
};

static int *volatile nowhere;      /* NULL, unknown to the compiler */

static void crash(void)
{
#ifdef __SANITIZE_ADDRESS__
	/* Under ASan+UBSan (make asan) a wild store is reported as a bug in
	 * the infer process, which the tests rightly fail on; abort instead:
	 * the stage dies by a signal all the same. */
	(void)nowhere;
	abort();
#else
	*nowhere = 42;                 /* SIGSEGV */
#endif
}

static long marker(const struct tpo_plugin_gen *g, const char *key)
{
	const char *p = memmem(g->prompt, g->prompt_len, key, strlen(key));

	if (!p)
		return -1;
	p += strlen(key);
	return *p == '=' ? strtol(p + 1, NULL, 10) : 0;
}

static int f_init(const char *options, void **ctx)
{
	(void)options;
	*ctx = NULL;
	return 0;
}

static int f_generate(void *ctx, struct tpo_plugin_gen *g, tpo_plugin_token_fn *tok, void *arg)
{
	struct st *s = g->state;
	unsigned n = g->max_tokens && g->max_tokens < 8 ? g->max_tokens : 8;
	char t[32];

	(void)ctx;
	if (!s) {
		s = g->state = calloc(1, sizeof(*s));
		if (!s)
			return -ENOMEM;
		s->segv_after = marker(g, "[[plugin:segv_after");
		if (s->segv_after < 0 && marker(g, "[[plugin:segv]]") >= 0)
			s->segv_after = 0;
		if (marker(g, "[[plugin:fail]]") >= 0) {
			g->err_status = 503;
			snprintf(g->err_msg, sizeof(g->err_msg), "injected failure");
			return -EIO;
		}
	}
	while (s->sent < n) {
		if (s->segv_after >= 0 && s->sent >= (unsigned long)s->segv_after)
			crash();
		snprintf(t, sizeof(t), "%stok%u", s->sent ? " " : "", s->sent);
		if (tok(arg, t, strlen(t)))
			return TPO_PLUGIN_MORE;
		s->sent++;
		/* Crash at the next call, once the stage has committed what we
		 * sent: "crashed after N tokens streamed" means N reached it. */
		if (s->segv_after >= 0 && s->sent >= (unsigned long)s->segv_after)
			return TPO_PLUGIN_MORE;
		if (s->sent % 2 == 0)
			return TPO_PLUGIN_MORE;    /* let the stage commit what we sent */
	}
	if (s->segv_after >= 0 && s->sent >= (unsigned long)s->segv_after)
		crash();
	return n < 8 ? TPO_PLUGIN_LENGTH : TPO_PLUGIN_STOP;
}

static void f_cancel(void *ctx, struct tpo_plugin_gen *g)
{
	(void)ctx;
	free(g->state);
	g->state = NULL;
}

static void f_fini(void *ctx)
{
	(void)ctx;
}

static const struct tpo_plugin_api api = {
	.abi_version = TPO_PLUGIN_ABI_VERSION,
	.name = "faulty",
	.init = f_init,
	.generate = f_generate,
	.cancel = f_cancel,
	.fini = f_fini,
};

const struct tpo_plugin_api *tpo_plugin_entry(void)
{
	return &api;
}
