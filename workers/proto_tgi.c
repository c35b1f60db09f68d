/*
 * proto_tgi.c — Hugging Face Text Generation Inference: POST
 * /generate_stream (streamed) or /generate with {"inputs", "parameters":
 * {"max_new_tokens", "seed", "details": true}}.
 *
 * Stream events: `data: {"token": {"text", "special"}, "generated_text":
 * null, "details": null}`; the last one carries "generated_text" (the whole
 * answer, not forwarded again) and details.finish_reason ("length",
 * "eos_token", "stop_sequence"). Special tokens (EOS) are not forwarded.
 * Errors: `data: {"error": "...", "error_type": "..."}` (also as an
 * `event: error`). A whole answer is {"generated_text", "details"}.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/proto.h"
#include "workers/upstream.h"

static const char *tgi_path(int chat, int stream)
{
	(void)chat;
	return stream ? "/generate_stream" : "/generate";
}

static int tgi_request(const struct tpo_up_req *r, struct tpo_buf *b)
{
	int err = 0;

	err |= tpo_buf_str(b, "{\"inputs\":");
	err |= tpo_buf_json_str(b, r->prompt, r->prompt_len);
	err |= tpo_buf_str(b, ",\"parameters\":{\"details\":true");
	if (r->max_tokens)
		err |= tpo_buf_u64(b, ",\"max_new_tokens\":", r->max_tokens);
	if (r->seed)
		err |= tpo_buf_u64(b, ",\"seed\":", r->seed & 0x7fffffffffffffffull);
	err |= tpo_buf_str(b, "}}");
	return err ? -ENOMEM : 0;
}

static int tgi_finish(struct tpo_up_call *c, const char *js, const jsmntok_t *t, int nt)
{
	const char *s;
	int n = tpo_up_json_str(c, js, t, nt, "details.finish_reason", &s);

	return n > 0 ? tpo_up_finish_of(s) : TPO_FINISH_STOP;
}

static int tgi_parse(struct tpo_up_call *c, const char *js, size_t len, int whole)
{
	const jsmntok_t *t;
	const char *s;
	int nt, n, i, err = 0;
	bool special = false;

	nt = tpo_up_json_parse(c, js, len, &t);
	if (nt < 0)
		return tpo_up_error(c, 0, "the model server sent invalid JSON");
	if (t[0].type == JSMN_ARRAY && whole && t[0].size > 0) {
		/* /generate may answer [{"generated_text": ...}] */
		const char *p = memchr(js, '{', len), *q = js + len;
		if (!p)
			return tpo_up_error(c, 0, "the model server sent an answer without an object");
		while (q > p && q[-1] != '}')
			q--;
		return p && q > p ? tgi_parse(c, p, (size_t)(q - p), 1)
				  : tpo_up_error(c, 0, "the model server sent an empty answer");
	}
	if (t[0].type != JSMN_OBJECT)
		return tpo_up_error(c, 0, "the model server sent JSON that is not an object");
	if (tpo_json_find(js, t, nt, 0, "error") >= 0) {
		n = tpo_up_json_str(c, js, t, nt, "error", &s);
		err = tpo_up_error(c, 0, "model server error: %.*s", n > 0 ? n : 7,
				   n > 0 ? s : "unknown");
		return err;
	}
	if (whole) {
		n = tpo_up_json_text_at(c, js, t, nt, "generated_text", &s);
		if (n > 0)
			err = tpo_up_token(c, s, (size_t)n);
		if (!err)
			tpo_up_end(c, tgi_finish(c, js, t, nt));
		return err;
	}
	if ((i = tpo_json_find(js, t, nt, 0, "token.special")) >= 0)
		tpo_json_get_bool(js, &t[i], &special);
	n = special ? 0 : tpo_up_json_text_at(c, js, t, nt, "token.text", &s);
	if (n > 0)
		err = tpo_up_token(c, s, (size_t)n);
	i = tpo_json_find(js, t, nt, 0, "generated_text");
	if (!err && i >= 0 && t[i].type == JSMN_STRING)
		tpo_up_end(c, tgi_finish(c, js, t, nt));
	return err;
}

static int tgi_event(struct tpo_up_call *c, const char *name, const char *data, size_t len)
{
	if (!strcmp(name, "error") && (len == 0 || data[0] != '{'))
		return tpo_up_error(c, 0, "model server error: %.*s", (int)len, data);
	return tgi_parse(c, data, len, 0);
}

static int tgi_body(struct tpo_up_call *c, const char *data, size_t len)
{
	return tgi_parse(c, data, len, 1);
}

const struct tpo_proto tpo_proto_tgi = {
	.name = "tgi",
	.path = tgi_path,
	/* TGI behind Hugging Face endpoints takes a bearer token. */
	.key_header = "Authorization: Bearer ",
	.request = tgi_request,
	.event = tgi_event,
	.body = tgi_body,
};
