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

static const char *oa_path(int chat, int stream)
{
	(void)stream;
	return chat ? "/v1/chat/completions" : "/v1/completions";
}

static int oa_request(const struct tpo_up_req *r, struct tpo_buf *b)
{
	int err = 0;

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
		err |= tpo_buf_u64(b, ",\"max_tokens\":", r->max_tokens);
	if (r->seed)
		err |= tpo_buf_u64(b, ",\"seed\":", r->seed & 0x7fffffffffffffffull);
	err |= tpo_buf_str(b, r->stream ? ",\"stream\":true}" : ",\"stream\":false}");
	return err ? -ENOMEM : 0;
}

/* A key to look for, its length known at compile time. */
struct oa_key {
	const char *s;
	size_t n;
};
#define OA_KEY(lit) { lit, sizeof(lit) - 1 }

/*
 * The values of keys names[0..n) of the object toks[obj] into val[] (-1:
 * absent), in one pass over its keys. Inlined into its callers: it runs
 * four times per streamed event (5 % of infer's instructions per streamed
 * answer, callgrind).
 */
static inline __attribute__((always_inline))
void oa_keys(const char *js, const jsmntok_t *t, int nt, int obj, const struct oa_key *names,
	     int n, int *val)
{
	int k = obj + 1, left = n, size;

	for (int i = 0; i < n; i++)
		val[i] = -1;
	if (obj < 0 || obj >= nt || t[obj].type != JSMN_OBJECT)
		return;
	size = t[obj].size;
	for (int m = 0; m < size && left && k + 1 < nt; m++) {
		size_t kl = (size_t)(t[k].end - t[k].start);
		const char *key = js + t[k].start;
		for (int i = 0; i < n; i++) {
			if (kl == names[i].n && val[i] < 0 && key[0] == names[i].s[0] &&
			    !memcmp(key, names[i].s, names[i].n)) {
				val[i] = k + 1;
				left--;
				break;
			}
		}
		/* A key and a value without children (most) span two tokens. */
		if (t[k + 1].size == 0)
			k += 2;
		else if ((k = tpo_json_skip(t, nt, k)) < 0)
			return;
	}
}

/* One chunk or answer object (whole: a non-streamed answer, which must
 * carry "choices"): tokens, finish reason, errors. */
static int oa_object(struct tpo_up_call *c, const char *js, size_t len, int whole)
{
	static const struct oa_key top[] = { OA_KEY("error"), OA_KEY("choices"), OA_KEY("usage") };
	static const struct oa_key choice[] = { OA_KEY("delta"), OA_KEY("text"), OA_KEY("message"),
						OA_KEY("finish_reason") };
	static const struct oa_key content[] = { OA_KEY("content") };
	static const struct oa_key usage[] = { OA_KEY("prompt_tokens"),
					       OA_KEY("completion_tokens") };
	const jsmntok_t *t;
	const char *s;
	int nt, n, err = 0, tv[3], cv[4], uv[2], x, used = -1;

	/* A chunk like the last but for its text: that text is all it says. */
	if ((n = tpo_up_shape_token(c, js, len, &s)) > 0)
		return tpo_up_token(c, s, (size_t)n);
	nt = tpo_up_json_parse(c, js, len, &t);
	if (nt < 0)
		return tpo_up_error(c, 0, "the model server sent invalid JSON");
	if (t[0].type != JSMN_OBJECT)
		return tpo_up_error(c, 0, "the model server sent JSON that is not an object");
	oa_keys(js, t, nt, 0, top, 3, tv);
	if (tv[0] >= 0 && !(t[tv[0]].type == JSMN_PRIMITIVE && js[t[tv[0]].start] == 'n')) {
		n = tpo_up_json_str(c, js, t, nt, "error.message", &s);
		if (n < 0)
			n = tpo_up_json_str(c, js, t, nt, "error", &s);
		return tpo_up_error(c, 0, "model server error: %.*s", n > 0 ? n : 7,
				    n > 0 ? s : "unknown");
	}
	if (whole && (tv[1] < 0 || t[tv[1]].type != JSMN_ARRAY)) {
		/* A 200 that is no completion ({"object":"error","message":..},
		 * {"detail":..}, {}): an error, never an empty answer. */
		n = tpo_up_json_str(c, js, t, nt, "message", &s);
		if (n <= 0)
			n = tpo_up_json_str(c, js, t, nt, "detail", &s);
		if (n > 0)
			return tpo_up_error(c, 0, "the model server's answer has no choices: %.*s",
					    n, s);
		return tpo_up_error(c, 0, "the model server's answer has no choices");
	}
	/* choices[0]: delta.content (chat chunk), text (completion), then
	 * message.content (whole chat answer), the first non-empty one. */
	x = tv[1] >= 0 && t[tv[1]].type == JSMN_ARRAY && t[tv[1]].size > 0 ? tv[1] + 1 : -1;
	oa_keys(js, t, nt, x, choice, 4, cv);
	for (int k = 0; k < 3; k++) {
		int v = cv[k];
		if (v < 0)
			continue;
		if (k != 1)
			oa_keys(js, t, nt, v, content, 1, &v);
		if (v >= 0 && (n = tpo_up_json_text(c, js, &t[v], &s)) > 0) {
			err = tpo_up_token(c, s, (size_t)n);
			used = v;
			break;
		}
	}
	if (!err) {
		int64_t pt = 0, ct = 0;
		if (cv[3] >= 0 && (n = tpo_up_json_tokstr(c, js, &t[cv[3]], &s)) > 0)
			tpo_up_finish_hint(c, tpo_up_finish_of(s));
		/* usage: in a whole answer, or the last chunk of a stream. */
		oa_keys(js, t, nt, tv[2], usage, 2, uv);
		if (uv[0] >= 0)
			tpo_json_get_int64(js, &t[uv[0]], &pt);
		if (uv[1] >= 0)
			tpo_json_get_int64(js, &t[uv[1]], &ct);
		if (pt > 0 || ct > 0)
			tpo_up_usage(c, pt > 0 && pt < UINT32_MAX ? (uint32_t)pt : 0,
				     ct > 0 && ct < UINT32_MAX ? (uint32_t)ct : 0);
	}
	/* Only a chunk whose one effect was its token can stand for the next. */
	if (!err && used >= 0 && (cv[3] < 0 || t[cv[3]].type != JSMN_STRING) &&
	    uv[0] < 0 && uv[1] < 0)
		tpo_up_shape_learn(c, js, len, &t[used]);
	else
		tpo_up_shape_forget(c);
	return err;
}

static int oa_event(struct tpo_up_call *c, const char *name, const char *data, size_t len)
{
	(void)name;
	if (len == 6 && !memcmp(data, "[DONE]", 6)) {
		tpo_up_end(c, -1);
		return 0;
	}
	return oa_object(c, data, len, 0);
}

static int oa_body(struct tpo_up_call *c, const char *data, size_t len)
{
	int err = oa_object(c, data, len, 1);

	if (!err)
		tpo_up_end(c, -1);
	return err;
}

const struct tpo_proto tpo_proto_openai = {
	.name = "openai",
	.path = oa_path,
	.key_header = "Authorization: Bearer ",
	.request = oa_request,
	.event = oa_event,
	.body = oa_body,
};
