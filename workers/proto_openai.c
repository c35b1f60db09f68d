/*
 * proto_openai.c — the OpenAI-compatible protocol: POST /v1/chat/completions
 * (chat requests) or /v1/completions (plain prompts), streamed as SSE
 * `data: {chunk}` events ending with `data: [DONE]`, or one JSON answer.
 * Serves OpenAI, vLLM, llama.cpp's and other compatible servers.
 *
 * Tokens: choices[0].delta.content (chat chunk), choices[0].text
 * (completion chunk), choices[0].message.content (whole chat answer).
 * choices[0].finish_reason "length" ends with TPO_FINISH_LENGTH. An "error"
 * object in a chunk (some servers send errors as 200 + one event) is a
 * protocol error. Authorization: Bearer <key> when the endpoint has a key.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "workers/upstream.h"

static int oa_request(const struct tpo_up_req *r, char *path, size_t pathcap,
		      struct curl_slist **h, struct tpo_buf *b)
{
	int err = 0;

	snprintf(path, pathcap, "%s", r->chat ? "/v1/chat/completions" : "/v1/completions");
	if (r->api_key) {
		struct tpo_buf a = { 0 };
		err = tpo_buf_printf(&a, "Authorization: Bearer %s", r->api_key);
		if (!err)
			*h = curl_slist_append(*h, a.p);
		tpo_buf_free(&a);
		if (err || !*h)
			return -ENOMEM;
	}
	err |= tpo_buf_str(b, "{\"model\":");
	err |= tpo_buf_json_str(b, r->model, strlen(r->model));
	if (r->chat) {
		err |= tpo_buf_str(b, ",\"messages\":[{\"role\":\"user\",\"content\":");
		err |= tpo_buf_json_str(b, r->prompt, r->prompt_len);
		err |= tpo_buf_str(b, "}]");
	} else {
		err |= tpo_buf_str(b, ",\"prompt\":");
		err |= tpo_buf_json_str(b, r->prompt, r->prompt_len);
	}
	if (r->max_tokens)
		err |= tpo_buf_printf(b, ",\"max_tokens\":%u", r->max_tokens);
	if (r->seed)
		err |= tpo_buf_printf(b, ",\"seed\":%llu",
				      (unsigned long long)(r->seed & 0x7fffffffffffffffull));
	err |= tpo_buf_str(b, r->stream ? ",\"stream\":true}" : ",\"stream\":false}");
	return err ? -ENOMEM : 0;
}

/* One chunk or answer object: tokens, finish reason, errors. */
static int oa_object(struct tpo_up_call *c, const char *js, size_t len)
{
	static const char *const text_paths[] = {
		"choices.0.delta.content", "choices.0.text", "choices.0.message.content",
	};
	jsmntok_t *t = NULL;
	const char *s;
	int nt, n, err = 0;

	nt = tpo_json_tokenize(js, len, &t, NULL);
	if (nt < 0)
		return tpo_up_error(c, 0, "the model server sent invalid JSON");
	if (t[0].type != JSMN_OBJECT) {
		free(t);
		return tpo_up_error(c, 0, "the model server sent JSON that is not an object");
	}
	if (tpo_json_find(js, t, nt, 0, "error") >= 0) {
		n = tpo_up_json_str(c, js, t, nt, "error.message", &s);
		if (n < 0)
			n = tpo_up_json_str(c, js, t, nt, "error", &s);
		err = tpo_up_error(c, 0, "model server error: %.*s", n > 0 ? n : 7,
				   n > 0 ? s : "unknown");
		free(t);
		return err;
	}
	for (size_t k = 0; k < sizeof(text_paths) / sizeof(text_paths[0]); k++) {
		n = tpo_up_json_str(c, js, t, nt, text_paths[k], &s);
		if (n > 0) {
			err = tpo_up_token(c, s, (size_t)n);
			break;
		}
	}
	if (!err) {
		int64_t pt = 0, ct = 0;
		int i;
		n = tpo_up_json_str(c, js, t, nt, "choices.0.finish_reason", &s);
		if (n > 0)
			tpo_up_finish_hint(c, tpo_up_finish_of(s));
		/* usage: in a whole answer, or the last chunk of a stream. */
		if ((i = tpo_json_find(js, t, nt, 0, "usage.prompt_tokens")) >= 0)
			tpo_json_get_int64(js, &t[i], &pt);
		if ((i = tpo_json_find(js, t, nt, 0, "usage.completion_tokens")) >= 0)
			tpo_json_get_int64(js, &t[i], &ct);
		if (pt > 0 || ct > 0)
			tpo_up_usage(c, pt > 0 && pt < UINT32_MAX ? (uint32_t)pt : 0,
				     ct > 0 && ct < UINT32_MAX ? (uint32_t)ct : 0);
	}
	free(t);
	return err;
}

static int oa_event(struct tpo_up_call *c, const char *name, const char *data, size_t len)
{
	(void)name;
	if (len == 6 && !memcmp(data, "[DONE]", 6)) {
		tpo_up_end(c, -1);
		return 0;
	}
	return oa_object(c, data, len);
}

static int oa_body(struct tpo_up_call *c, const char *data, size_t len)
{
	int err = oa_object(c, data, len);

	if (!err)
		tpo_up_end(c, -1);
	return err;
}

const struct tpo_proto tpo_proto_openai = {
	.name = "openai",
	.request = oa_request,
	.event = oa_event,
	.body = oa_body,
};
