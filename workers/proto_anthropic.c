/*
 * proto_anthropic.c — Anthropic's Messages API: POST /v1/messages with
 * x-api-key and anthropic-version headers, {"model", "max_tokens",
 * "messages": [{"role": "user", "content": prompt}], "stream"}.
 *
 * Stream events (by `event:` name): message_start, content_block_start,
 * ping, content_block_delta (delta.type "text_delta": delta.text is a
 * token), content_block_stop, message_delta (delta.stop_reason:
 * "max_tokens" -> length), message_stop (the end), error ({"error":
 * {"type", "message"}}). A whole answer has content[].text and stop_reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/proto.h"
#include "workers/upstream.h"

#define ANTHROPIC_VERSION    "2023-06-01"
#define ANTHROPIC_MAX_TOKENS 4096    /* the API requires max_tokens */

static const char *an_path(int chat, int stream)
{
	(void)chat;
	(void)stream;
	return "/v1/messages";
}

static int an_request(const struct tpo_up_req *r, struct tpo_buf *b)
{
	int err = 0;

	err |= tpo_buf_str(b, "{\"model\":");
	err |= tpo_buf_json_str(b, r->model, strlen(r->model));
	err |= tpo_buf_u64(b, ",\"max_tokens\":",
			   r->max_tokens ? r->max_tokens : ANTHROPIC_MAX_TOKENS);
	err |= tpo_buf_str(b, ",\"messages\":[{\"role\":\"user\",\"content\":");
	err |= tpo_buf_json_str(b, r->prompt, r->prompt_len);
	err |= tpo_buf_str(b, r->stream ? "}],\"stream\":true}" : "}],\"stream\":false}");
	return err ? -ENOMEM : 0;
}

static int parse(struct tpo_up_call *c, const char *js, size_t len, const jsmntok_t **t)
{
	int nt = tpo_up_json_parse(c, js, len, t);

	if (nt < 0)
		return tpo_up_error(c, 0, "the model server sent invalid JSON");
	if ((*t)[0].type != JSMN_OBJECT)
		return tpo_up_error(c, 0, "the model server sent JSON that is not an object");
	return nt;
}

static int an_error(struct tpo_up_call *c, const char *js, const jsmntok_t *t, int nt)
{
	const char *s;
	char type[64] = "error";
	int n = tpo_up_json_str(c, js, t, nt, "error.type", &s);

	if (n > 0)
		snprintf(type, sizeof(type), "%.*s", n, s);
	n = tpo_up_json_str(c, js, t, nt, "error.message", &s);
	return tpo_up_error(c, !strcmp(type, "rate_limit_error") ? 429 : 0,
			    "model server error: %s: %.*s", type, n > 0 ? n : 7,
			    n > 0 ? s : "unknown");
}

static int an_event(struct tpo_up_call *c, const char *name, const char *data, size_t len)
{
	const jsmntok_t *t;
	const char *s;
	int nt, n, err = 0;

	if (!strcmp(name, "ping") || !strcmp(name, "content_block_start") ||
	    !strcmp(name, "content_block_stop") || !strcmp(name, "message_start"))
		return 0;
	if (!strcmp(name, "message_stop")) {
		tpo_up_end(c, -1);
		return 0;
	}
	/* A delta like the last but for its text (workers/upstream.h). */
	if (!strcmp(name, "content_block_delta") &&
	    (n = tpo_up_shape_token(c, data, len, &s)) > 0)
		return tpo_up_token(c, s, (size_t)n);
	nt = parse(c, data, len, &t);
	if (nt < 0)
		return nt;
	if (!strcmp(name, "error") || tpo_json_find(data, t, nt, 0, "error") >= 0) {
		err = an_error(c, data, t, nt);
	} else if (!strcmp(name, "content_block_delta")) {
		int v = tpo_json_find(data, t, nt, 0, "delta.text");

		n = v >= 0 ? tpo_up_json_text(c, data, &t[v], &s) : -ENOENT;
		if (n > 0)
			err = tpo_up_token(c, s, (size_t)n);
		/* Its one effect was the token: it may stand for the next. */
		if (n > 0 && !err)
			tpo_up_shape_learn(c, data, len, &t[v]);
		else
			tpo_up_shape_forget(c);
	} else if (!strcmp(name, "message_delta")) {
		n = tpo_up_json_str(c, data, t, nt, "delta.stop_reason", &s);
		if (n > 0)
			tpo_up_finish_hint(c, tpo_up_finish_of(s));
	}
	return err;
}

static int an_body(struct tpo_up_call *c, const char *data, size_t len)
{
	const jsmntok_t *t;
	const char *s;
	char path[32];
	int nt = parse(c, data, len, &t), n, err = 0;

	if (nt < 0)
		return nt;
	if (tpo_json_find(data, t, nt, 0, "error") >= 0) {
		err = an_error(c, data, t, nt);
		return err;
	}
	for (int k = 0; !err; k++) {
		snprintf(path, sizeof(path), "content.%d.text", k);
		if (tpo_json_find(data, t, nt, 0, path) < 0) {
			snprintf(path, sizeof(path), "content.%d", k);
			if (tpo_json_find(data, t, nt, 0, path) < 0)
				break;
			continue;
		}
		n = tpo_up_json_str(c, data, t, nt, path, &s);
		if (n > 0)
			err = tpo_up_token(c, s, (size_t)n);
	}
	n = tpo_up_json_str(c, data, t, nt, "stop_reason", &s);
	if (!err)
		tpo_up_end(c, n > 0 ? tpo_up_finish_of(s) : TPO_FINISH_STOP);
	return err;
}

const struct tpo_proto tpo_proto_anthropic = {
	.name = "anthropic",
	.path = an_path,
	.header = "anthropic-version: " ANTHROPIC_VERSION,
	.key_header = "x-api-key: ",
	.request = an_request,
	.event = an_event,
	.body = an_body,
};
