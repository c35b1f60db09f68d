/*
 * echo.c — example native plugin (ABI: workers/plugin_abi.h): answers with
 * the words of the prompt, one token per word, at most max_tokens (options
 * "tokens=N" sets the default, 16).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "workers/plugin_abi.h"

struct echo_ctx {
	unsigned tokens;
};

struct echo_state {
	size_t off;
	unsigned sent;
};

static int echo_init(const char *options, void **ctx)
{
	struct echo_ctx *c = calloc(1, sizeof(*c));
	const char *p;

	if (!c)
		return -ENOMEM;
	c->tokens = 16;
	if (options && (p = strstr(options, "tokens=")))
		c->tokens = (unsigned)strtoul(p + 7, NULL, 10);
	*ctx = c;
	return 0;
}

static int echo_generate(void *ctx, struct tpo_plugin_gen *g, tpo_plugin_token_fn *tok,
			 void *arg)
{
	struct echo_ctx *c = ctx;
	struct echo_state *s = g->state;
	unsigned limit = g->max_tokens && g->max_tokens < c->tokens ? g->max_tokens : c->tokens;

	if (!s) {
		s = g->state = calloc(1, sizeof(*s));
		if (!s) {
			g->err_status = 500;
			strcpy(g->err_msg, "out of memory");
			return -ENOMEM;
		}
	}
	for (int burst = 0; burst < 8; burst++) {
		size_t b = s->off, e;
		if (s->sent >= limit)
			return limit < c->tokens ? TPO_PLUGIN_LENGTH : TPO_PLUGIN_STOP;
		while (b < g->prompt_len && g->prompt[b] == ' ')
			b++;
		if (b >= g->prompt_len)
			return TPO_PLUGIN_STOP;
		e = b;
		while (e < g->prompt_len && g->prompt[e] != ' ')
			e++;
		/* the word with its leading space, as tokenizers do */
		if (tok(arg, g->prompt + (s->off < b && s->sent ? b - 1 : b),
			e - (s->off < b && s->sent ? b - 1 : b)))
			return TPO_PLUGIN_MORE;
		s->off = e;
		s->sent++;
	}
	return TPO_PLUGIN_MORE;
}

static void echo_cancel(void *ctx, struct tpo_plugin_gen *g)
{
	(void)ctx;
	free(g->state);
	g->state = NULL;
}

static void echo_fini(void *ctx)
{
	free(ctx);
}

static const struct tpo_plugin_api api = {
	.abi_version = TPO_PLUGIN_ABI_VERSION,
	.name = "echo",
	.init = echo_init,
	.generate = echo_generate,
	.cancel = echo_cancel,
	.fini = echo_fini,
};

const struct tpo_plugin_api *tpo_plugin_entry(void)
{
	return &api;
}
