/*
 * fuzz_oai — libFuzzer target for tpo_oai_parse, the front's parser of a
 * client's /v1/chat/completions and /v1/completions body.
 *
 * The first byte picks the kind and the prompt buffer's size (so -E2BIG is
 * reached too); the rest is the body. Checks the contract: 0, -EINVAL,
 * -E2BIG or -ENOMEM; an error comes with a non-empty NUL-terminated
 * message; a success stays inside its limits. One request struct is kept
 * across inputs, as the front keeps it, so state left by an earlier body
 * (the kept token array) is exercised too.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/openai.h"

#define check(c) do { if (!(c)) { fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); __builtin_trap(); } } while (0)

static struct tpo_oai_req req;
static char text[65536];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	size_t cap;
	int kind, r;

	if (size < 1)
		return 0;
	kind = data[0] & 1 ? TPO_OAI_COMPLETION : TPO_OAI_CHAT;
	cap = data[0] & 2 ? 64 : sizeof(text);
	req.text = text;
	req.text_cap = cap;
	memset(err, 0x55, sizeof(err));
	r = tpo_oai_parse(&req, (const char *)data + 1, size - 1, kind, err, sizeof(err));
	check(r == 0 || r == -EINVAL || r == -E2BIG || r == -ENOMEM);
	if (r == -EINVAL || r == -E2BIG) {
		check(memchr(err, 0, sizeof(err)) != NULL && err[0] != 0);
		return 0;
	}
	if (r < 0)
		return 0;
	check(req.kind == kind);
	check(req.text_len < cap && text[req.text_len] == 0);
	check(req.stream == 0 || req.stream == 1);
	check(req.nstop >= 0 && req.nstop <= TPO_OAI_STOP_MAX);
	for (int i = 0; i < req.nstop; i++)
		check(req.stop_len[i] >= 1 && req.stop_len[i] <= TPO_OAI_STOP_LEN &&
		      req.stop[i][req.stop_len[i]] == 0);
	check(req.user_len <= TPO_OAI_USER_MAX);
	check(memchr(req.model, 0, sizeof(req.model)) != NULL);
	check(req.max_tokens <= TPO_OAI_MAX_TOKENS);
	check(!req.has_temperature || (req.temperature >= 0 && req.temperature <= 2));
	check(!req.has_top_p || (req.top_p >= 0 && req.top_p <= 1));
	check(kind != TPO_OAI_CHAT || (req.nmessages >= 1 && req.nmessages <= TPO_OAI_MESSAGES_MAX));
	return 0;
}
