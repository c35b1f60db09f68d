/*
 * proto_llamacpp.c — llama.cpp's native server API: POST /completion with
 * {"prompt", "n_predict", "stream", "cache_prompt": true, "id_slot"}.
 * Streamed answers are SSE `data: {"content": "...", "stop": false}` events;
 * the last has "stop": true (there is no [DONE]); "stopped_limit": true means
 * the token limit ended it. A whole answer is one such object.
 *
 * KV-cache reuse: cache_prompt keeps the prompt's cache in the slot, and
 * id_slot = session_hash % slots pins a conversation to one slot, where slots
 * is the server's --parallel, given in the endpoint URL as "#slots=N" (the
 * fragment is never sent). Without it id_slot is -1: the server picks.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/proto.h"
#include "workers/upstream.h"

static const char *lc_path(int chat, int stream)
{
	(void)chat;
	(void)stream;
	return "/completion";
}

static int lc_request(const struct tpo_up_req *r, struct tpo_buf *b)
{
	int err = 0;
	long slot = r->slots ? (long)(r->session_hash % r->slots) : -1;

	err |= tpo_buf_str(b, "{\"prompt\":");
	err |= tpo_buf_json_str(b, r->prompt, r->prompt_len);
	err |= r->max_tokens ? tpo_buf_u64(b, ",\"n_predict\":", r->max_tokens)
			     : tpo_buf_str(b, ",\"n_predict\":-1");
	err |= slot >= 0 ? tpo_buf_u64(b, ",\"cache_prompt\":true,\"id_slot\":", (uint64_t)slot)
			 : tpo_buf_str(b, ",\"cache_prompt\":true,\"id_slot\":-1");
	if (r->seed)
		err |= tpo_buf_u64(b, ",\"seed\":", r->seed & 0x7fffffff);
	err |= tpo_buf_str(b, r->stream ? ",\"stream\":true}" : ",\"stream\":false}");
	return err ? -ENOMEM : 0;
}

static int lc_object(struct tpo_up_call *c, const char *js, size_t len)
{
	const jsmntok_t *t;
	const char *s;
	int nt, n, i, err = 0;
	bool stop = false, limit = false;

	nt = tpo_up_json_parse(c, js, len, &t);
	if (nt < 0)
		return tpo_up_error(c, 0, "the model server sent invalid JSON");
	if (t[0].type != JSMN_OBJECT)
		return tpo_up_error(c, 0, "the model server sent JSON that is not an object");
	if (tpo_json_find(js, t, nt, 0, "error") >= 0) {
		n = tpo_up_json_str(c, js, t, nt, "error.message", &s);
		err = tpo_up_error(c, 0, "model server error: %.*s", n > 0 ? n : 7,
				   n > 0 ? s : "unknown");
		return err;
	}
	n = tpo_up_json_text_at(c, js, t, nt, "content", &s);
	if (n > 0)
		err = tpo_up_token(c, s, (size_t)n);
	if ((i = tpo_json_find(js, t, nt, 0, "stopped_limit")) >= 0)
		tpo_json_get_bool(js, &t[i], &limit);
	if ((i = tpo_json_find(js, t, nt, 0, "stop")) >= 0)
		tpo_json_get_bool(js, &t[i], &stop);
	if (!err && stop)
		tpo_up_end(c, limit ? TPO_FINISH_LENGTH : TPO_FINISH_STOP);
	return err;
}

static int lc_event(struct tpo_up_call *c, const char *name, const char *data, size_t len)
{
	(void)name;
	return lc_object(c, data, len);
}

static int lc_body(struct tpo_up_call *c, const char *data, size_t len)
{
	int err = lc_object(c, data, len);

	if (!err)
		tpo_up_end(c, -1);
	return err;
}

const struct tpo_proto tpo_proto_llamacpp = {
	.name = "llamacpp",
	.path = lc_path,
	/* llama-server --api-key checks a bearer token. */
	.key_header = "Authorization: Bearer ",
	.request = lc_request,
	.event = lc_event,
	.body = lc_body,
};
