#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/openai.h"
#include "workers/json.h"

static char text[4096];
static char err[256];

/* Parses into r, keeping its token array for the next call. */
static int parse_keep(struct tpo_oai_req *r, const char *body, int kind)
{
	r->text = text;
	r->text_cap = sizeof(text);
	return tpo_oai_parse(r, body, strlen(body), kind, err, sizeof(err));
}

/* Parses into r; the fields stay, the token array is freed. */
static int parse(struct tpo_oai_req *r, const char *body, int kind)
{
	int rc = parse_keep(r, body, kind);

	tpo_oai_req_fini(r);
	return rc;
}

/* ---- good requests ----------------------------------------------------- */

Test(parse, chat_full)
{
	struct tpo_oai_req r = { 0 };
	const char *body =
		"{ \"model\": \"llama-3\", \"messages\": ["
		"  {\"role\": \"system\", \"content\": \"be brief\"},"
		"  {\"role\": \"user\", \"content\": \"hi\", \"name\": \"bob\"} ],"
		" \"stream\": true, \"max_tokens\": 64, \"temperature\": 0.7, \"top_p\": 1,"
		" \"n\": 1, \"stop\": [\"\\n\\n\", \"END\"], \"user\": \"u-42\", \"seed\": -7,"
		" \"stream_options\": {\"include_usage\": true},"
		" \"presence_penalty\": 0.5, \"logit_bias\": {\"50256\": -100},"
		" \"response_format\": {\"type\": \"text\"}, \"tools\": [{\"type\": \"function\","
		"   \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}}],"
		" \"tool_choice\": \"auto\", \"metadata\": {\"a\": \"b\"}, \"store\": false,"
		" \"some_future_field\": [1, {\"x\": null}] }";

	cr_assert_eq(parse(&r, body, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_str_eq(r.model, "llama-3");
	cr_assert_str_eq(r.text, "system: be brief\nuser: hi\n");
	cr_assert_eq(r.text_len, strlen("system: be brief\nuser: hi\n"));
	cr_assert_eq(r.nmessages, 2);
	cr_assert_eq(r.kind, TPO_OAI_CHAT);
	cr_assert_eq(r.stream, 1);
	cr_assert_eq(r.include_usage, 1);
	cr_assert_eq(r.max_tokens, 64);
	cr_assert_eq(r.has_temperature, 1);
	cr_assert_float_eq(r.temperature, 0.7, 1e-12);
	cr_assert_eq(r.has_top_p, 1);
	cr_assert_float_eq(r.top_p, 1.0, 1e-12);
	cr_assert_eq(r.nstop, 2);
	cr_assert_str_eq(r.stop[0], "\n\n");
	cr_assert_eq(r.stop_len[0], 2);
	cr_assert_str_eq(r.stop[1], "END");
	cr_assert_str_eq(r.user, "u-42");
	cr_assert_eq(r.user_len, 4);
	cr_assert_eq(r.has_seed, 1);
	cr_assert_eq(r.seed, -7);
}

Test(parse, chat_minimal_defaults)
{
	struct tpo_oai_req r = { 0 };

	cr_assert_eq(parse(&r, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
			   TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_str_eq(r.model, "");
	cr_assert_eq(r.stream, 0);
	cr_assert_eq(r.max_tokens, 0);
	cr_assert_eq(r.has_temperature, 0);
	cr_assert_eq(r.has_seed, 0);
	cr_assert_eq(r.nstop, 0);
	cr_assert_eq(r.user_len, 0);
	cr_assert_str_eq(r.text, "user: x\n");
}

Test(parse, nulls_mean_not_given)
{
	struct tpo_oai_req r = { 0 };

	cr_assert_eq(parse(&r, "{\"model\":null,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
			   "\"stream\":null,\"max_tokens\":null,\"temperature\":null,\"top_p\":null,"
			   "\"n\":null,\"stop\":null,\"user\":null,\"seed\":null,"
			   "\"stream_options\":null}", TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_str_eq(r.model, "");
	cr_assert_eq(r.max_tokens, 0);
	cr_assert_eq(r.has_temperature + r.has_top_p + r.has_seed + r.nstop, 0);
}

Test(parse, chat_content_parts_and_escapes)
{
	struct tpo_oai_req r = { 0 };
	const char *body =
		"{\"model\":\"m\",\"messages\":["
		"{\"role\":\"developer\",\"content\":[{\"type\":\"text\",\"text\":\"Hello \"},"
		"  {\"text\":\"world\",\"type\":\"text\"}]},"
		"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\"}]},"
		"{\"role\":\"tool\",\"content\":\"q\\\"\\n\\u00e9\\ud83d\\ude00\\\\\"}]}";

	cr_assert_eq(parse(&r, body, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_str_eq(r.text, "developer: Hello world\nassistant: \n"
			 "tool: q\"\n\xc3\xa9\xf0\x9f\x98\x80\\\n");
	cr_assert_eq(r.nmessages, 3);
}

Test(parse, completion_string_and_array)
{
	struct tpo_oai_req r = { 0 };

	cr_assert_eq(parse(&r, "{\"model\":\"m\",\"prompt\":\"Once upon\",\"max_tokens\":5,"
			   "\"messages\":\"ignored here\"}", TPO_OAI_COMPLETION), 0, "%s", err);
	cr_assert_str_eq(r.text, "Once upon");
	cr_assert_eq(r.kind, TPO_OAI_COMPLETION);
	cr_assert_eq(r.max_tokens, 5);

	cr_assert_eq(parse(&r, "{\"prompt\":[\"a\",\"b\\tc\",\"\"],\"stop\":\"\\n\"}",
			   TPO_OAI_COMPLETION), 0, "%s", err);
	cr_assert_str_eq(r.text, "a\nb\tc\n");
	cr_assert_eq(r.text_len, 6);
	cr_assert_eq(r.nstop, 1);
	cr_assert_str_eq(r.stop[0], "\n");
}

Test(parse, max_completion_tokens_wins)
{
	struct tpo_oai_req r = { 0 };

	cr_assert_eq(parse(&r, "{\"max_completion_tokens\":9,\"max_tokens\":100,"
			   "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", TPO_OAI_CHAT), 0);
	cr_assert_eq(r.max_tokens, 9);
	cr_assert_eq(parse(&r, "{\"max_tokens\":1000000,"
			   "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", TPO_OAI_CHAT), 0);
	cr_assert_eq(r.max_tokens, 1000000);
}

Test(parse, empty_stop_strings_skipped)
{
	struct tpo_oai_req r = { 0 };

	cr_assert_eq(parse(&r, "{\"prompt\":\"p\",\"stop\":[\"\",\"x\",\"\",\"y\"]}",
			   TPO_OAI_COMPLETION), 0, "%s", err);
	cr_assert_eq(r.nstop, 2);
	cr_assert_str_eq(r.stop[0], "x");
	cr_assert_str_eq(r.stop[1], "y");
}

/* ---- errors ------------------------------------------------------------ */

struct bad {
	int kind;
	const char *body;
	const char *msg;    /* expected prefix of err */
};

#define MSG1 "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

static const struct bad bads[] = {
	{ TPO_OAI_CHAT, "{\"model\":\"m\"}", "'messages' is a required property" },
	{ TPO_OAI_COMPLETION, "{\"model\":\"m\"," MSG1 "}", "'prompt' is a required property" },
	{ TPO_OAI_CHAT, "{\"messages\":[]}", "Invalid 'messages': empty array." },
	{ TPO_OAI_CHAT, "{\"messages\":\"hi\"}", "Invalid type for 'messages': expected an array" },
	{ TPO_OAI_CHAT, "{\"messages\":null}", "Invalid type for 'messages': expected an array" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"max_tokens\":\"5\"}",
	  "Invalid type for 'max_tokens': expected an integer" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"max_tokens\":1.5}",
	  "Invalid type for 'max_tokens': expected an integer" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"max_tokens\":0}",
	  "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 instead." },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"max_tokens\":1000001}",
	  "Invalid 'max_tokens': integer above maximum value. Expected a value <= 1000000" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"max_completion_tokens\":-1}",
	  "Invalid 'max_completion_tokens': integer below minimum value" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"max_tokens\":99999999999999999999999}",
	  "Invalid 'max_tokens': integer out of range" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"temperature\":\"hot\"}",
	  "Invalid type for 'temperature': expected a number" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"temperature\":true}",
	  "Invalid type for 'temperature': expected a number" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"temperature\":2.5}",
	  "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead." },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"top_p\":-0.1}",
	  "Invalid 'top_p': decimal below minimum value" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"top_p\":1e1}",
	  "Invalid 'top_p': decimal above maximum value" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stream\":\"yes\"}",
	  "Invalid type for 'stream': expected a boolean" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stream\":1}",
	  "Invalid type for 'stream': expected a boolean" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"n\":2}", "n > 1 is not supported" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"n\":0}", "Invalid 'n': integer below minimum value" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"n\":\"1\"}", "Invalid type for 'n': expected an integer" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}",
	  "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length 5 instead." },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stop\":42}",
	  "Invalid type for 'stop': expected a string or an array of strings" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stop\":[\"a\",1]}",
	  "Invalid type for 'stop': expected a string or an array of strings" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stop\":\"a\\u0000b\"}",
	  "Invalid 'stop': stop sequences must not contain NUL" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"model\":42}", "Invalid type for 'model': expected a string" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"model\":"
	  "\"0123456789012345678901234567890123456789012345678901234567890123\"}",
	  "Invalid 'model': string too long. Expected a string with maximum length 63" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"user\":5}", "Invalid type for 'user': expected a string" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"seed\":\"1\"}", "Invalid type for 'seed': expected an integer" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"seed\":1.0}", "Invalid type for 'seed': expected an integer" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stream_options\":\"x\"}",
	  "Invalid type for 'stream_options': expected an object" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stream_options\":{\"include_usage\":\"y\"}}",
	  "Invalid type for 'stream_options.include_usage': expected a boolean" },
	{ TPO_OAI_CHAT, "{\"messages\":[\"hi\"]}",
	  "Invalid type for 'messages[0]': expected an object" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"content\":\"x\"}]}",
	  "'messages[0].role' is a required property" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":5,\"content\":\"x\"}]}",
	  "Invalid type for 'messages[0].role': expected a string" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
	  "{\"role\":\"wizard\",\"content\":\"x\"}]}",
	  "Invalid value for 'messages[1].role': supported values are" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\"}]}",
	  "'messages[0].content' is a required property" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}",
	  "'messages[0].content' is a required property" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}",
	  "Invalid type for 'messages[0].content': expected a string or an array of content parts" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}",
	  "Invalid type for 'messages[0].content[0]': expected an object" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
	  "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x\"}}]}]}",
	  "Invalid value for 'messages[0].content[1].type': only 'text' content parts are supported" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}",
	  "'messages[0].content[0].type' is a required property" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
	  "'messages[0].content[0].text' is a required property" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":1}]}]}",
	  "Invalid type for 'messages[0].content[0].text': expected a string" },
	{ TPO_OAI_COMPLETION, "{\"prompt\":5}",
	  "Invalid type for 'prompt': expected a string or an array of strings" },
	{ TPO_OAI_COMPLETION, "{\"prompt\":[1,2,3]}",
	  "Invalid type for 'prompt': expected a string or an array of strings" },
	{ TPO_OAI_COMPLETION, "{\"prompt\":[]}", "Invalid 'prompt': empty array." },
	{ TPO_OAI_CHAT, "[1,2]", "body must be a JSON object" },
	{ TPO_OAI_CHAT, "\"text\"", "body must be a JSON object" },
	{ TPO_OAI_CHAT, "", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "   ", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{\"messages\": [}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{" MSG1 ",}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{\"a\" 1," MSG1 "}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"stream\": tru}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"x\":[1 2]}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{" MSG1 "} {}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{" MSG1 ",\"x\":\"a\tb\"}", "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{" MSG1, "body is not valid JSON" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", "Invalid " },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]}",
	  "body is not valid UTF-8" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}",
	  "body is not valid UTF-8" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xf4\x90\x80\x80\"}]}",
	  "body is not valid UTF-8" },
	{ TPO_OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\xe2\x82",
	  "body is not valid UTF-8" },
	{ TPO_OAI_CHAT, "{\"model\":\"\xe2\x82\",\"messages\":[]}", "body is not valid UTF-8" },
};

Test(parse, error_classes)
{
	for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		struct tpo_oai_req r = { 0 };
		int rc = parse(&r, bads[i].body, bads[i].kind);

		cr_assert_eq(rc, -EINVAL, "case %zu (%s): rc %d", i, bads[i].body, rc);
		cr_assert(strncmp(err, bads[i].msg, strlen(bads[i].msg)) == 0,
			  "case %zu (%s): got \"%s\", want \"%s\"", i, bads[i].body, err,
			  bads[i].msg);
	}
}

Test(parse, unsupported_kind)
{
	struct tpo_oai_req r = { 0 };

	cr_assert_eq(parse(&r, "{" MSG1 "}", 7), -EINVAL);
	cr_assert_neq(err[0], '\0');
}

Test(parse, too_many_messages)
{
	static char body[16384];
	struct tpo_oai_req r = { 0 };
	size_t o = 0;

	o += (size_t)sprintf(body + o, "{\"messages\":[");
	for (int i = 0; i < 257; i++)
		o += (size_t)sprintf(body + o, "%s{\"role\":\"user\",\"content\":\"\"}", i ? "," : "");
	sprintf(body + o, "]}");
	cr_assert_eq(parse(&r, body, TPO_OAI_CHAT), -EINVAL);
	cr_assert_str_eq(err, "Invalid 'messages': array too long. Expected an array with "
			 "maximum length 256, but got an array with length 257 instead.");
	/* 256 is fine. */
	char *last = strrchr(body, '{');
	strcpy(last - 1, "]}");
	cr_assert_eq(parse(&r, body, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_eq(r.nmessages, 256);
}

Test(parse, prompt_budget)
{
	struct tpo_oai_req r = { 0 };
	const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
	char small[16];

	/* "user: hi\n" is 9 bytes; with its NUL it needs 10. */
	r.text = small;
	r.text_cap = 10;
	cr_assert_eq(tpo_oai_parse(&r, body, strlen(body), TPO_OAI_CHAT, err, sizeof(err)), 0);
	cr_assert_str_eq(small, "user: hi\n");
	r.text = small;
	r.text_cap = 9;
	cr_assert_eq(tpo_oai_parse(&r, body, strlen(body), TPO_OAI_CHAT, err, sizeof(err)), -E2BIG);
	cr_assert(strstr(err, "too large") != NULL, "%s", err);
	r.text = small;
	r.text_cap = 0;
	cr_assert_eq(tpo_oai_parse(&r, body, strlen(body), TPO_OAI_CHAT, err, sizeof(err)), -E2BIG);

	const char *cbody = "{\"prompt\":[\"abc\",\"def\"]}";
	r.text = small;
	r.text_cap = 8;
	cr_assert_eq(tpo_oai_parse(&r, cbody, strlen(cbody), TPO_OAI_COMPLETION, err,
				   sizeof(err)), 0);
	cr_assert_str_eq(small, "abc\ndef");
	r.text = small;
	r.text_cap = 7;
	cr_assert_eq(tpo_oai_parse(&r, cbody, strlen(cbody), TPO_OAI_COMPLETION, err,
				   sizeof(err)), -E2BIG);
	tpo_oai_req_fini(&r);
}

/* The token array is kept from one request to the next (no allocation per
 * request) unless one body needed more than TPO_OAI_TOKS_KEEP tokens. */
Test(parse, token_array_kept_unless_large)
{
	struct tpo_oai_req r = { 0 };
	const char *small = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
	size_t cap = 64 + 4 * TPO_OAI_TOKS_KEEP, n;
	char *big = malloc(cap);
	jsmntok_t *kept;

	cr_assert_eq(parse_keep(&r, small, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_not_null(r.toks);
	kept = r.toks;
	cr_assert_eq(parse_keep(&r, small, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_eq(r.toks, kept);
	/* One message and an unknown member of TPO_OAI_TOKS_KEEP numbers. */
	n = (size_t)snprintf(big, cap, "{\"x\":[");
	for (int i = 0; i < TPO_OAI_TOKS_KEEP; i++)
		n += (size_t)snprintf(big + n, cap - n, "%s1", i ? "," : "");
	snprintf(big + n, cap - n, "],\"messages\":[{\"role\":\"user\",\"content\":\"yo\"}]}");
	cr_assert_eq(parse_keep(&r, big, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_str_eq(r.text, "user: yo\n");
	cr_assert_null(r.toks);
	cr_assert_eq(r.toks_cap, 0);
	/* And the next request parses as before. */
	cr_assert_eq(parse_keep(&r, small, TPO_OAI_CHAT), 0, "%s", err);
	cr_assert_str_eq(r.text, "user: hi\n");
	cr_assert_not_null(r.toks);
	tpo_oai_req_fini(&r);
	cr_assert_null(r.toks);
	free(big);
}

Test(parse, small_err_buffer_truncates)
{
	struct tpo_oai_req r = { 0 };
	char e[8];

	memset(e, 'z', sizeof(e));
	r.text = text;
	r.text_cap = sizeof(text);
	cr_assert_eq(tpo_oai_parse(&r, "{}", 2, TPO_OAI_CHAT, e, sizeof(e)), -EINVAL);
	cr_assert_eq(e[7], '\0');
	cr_assert_eq(tpo_oai_parse(&r, "{}", 2, TPO_OAI_CHAT, NULL, 0), -EINVAL);
	tpo_oai_req_fini(&r);
}

Test(parse, body_not_nul_terminated)
{
	struct tpo_oai_req r = { 0 };
	char body[64];
	const char *s = "{\"prompt\":\"ab\"}";

	memset(body, '}', sizeof(body));
	memcpy(body, s, strlen(s));
	r.text = text;
	r.text_cap = sizeof(text);
	cr_assert_eq(tpo_oai_parse(&r, body, strlen(s), TPO_OAI_COMPLETION, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_str_eq(r.text, "ab");
	tpo_oai_req_fini(&r);
}

/* ---- encoders ---------------------------------------------------------- */

struct doc {
	const char *js;
	jsmntok_t *t;
	int n;
};

static void doc_parse(struct doc *d, const char *js, size_t len)
{
	struct tpo_json_error je;

	d->js = js;
	d->n = tpo_json_tokenize(js, len, &d->t, &je);
	cr_assert_gt(d->n, 0, "invalid JSON (%s at %zu): %.*s", je.msg, je.off, (int)len, js);
}

/* Token index at a dotted path ("choices.0.delta.content"), or -1. */
static int doc_at(const struct doc *d, const char *path)
{
	int i = 0;
	char part[64];

	while (*path) {
		size_t l = strcspn(path, ".");

		cr_assert_lt(l, sizeof(part));
		memcpy(part, path, l);
		part[l] = '\0';
		path += l + (path[l] == '.');
		if (d->t[i].type == JSMN_ARRAY) {
			int k = atoi(part), j = i + 1;

			if (k >= d->t[i].size)
				return -1;
			while (k-- > 0)
				j = tpo_json_skip(d->t, d->n, j);
			i = j;
		} else if (d->t[i].type == JSMN_OBJECT) {
			int j = i + 1, found = -1;

			for (int k = 0; k < d->t[i].size; k++) {
				if (tpo_json_tok_eq(d->js, &d->t[j], part))
					found = j + 1;
				j = tpo_json_skip(d->t, d->n, j);
			}
			if (found < 0)
				return -1;
			i = found;
		} else {
			return -1;
		}
	}
	return i;
}

/* The decoded string at path into a static buffer. */
static const char *doc_str(const struct doc *d, const char *path, int *len)
{
	static char buf[1024];
	int i = doc_at(d, path);

	cr_assert_geq(i, 0, "no %s", path);
	cr_assert_eq(d->t[i].type, JSMN_STRING, "%s is not a string", path);
	int n = tpo_json_get_string(d->js, &d->t[i], buf, sizeof(buf));
	cr_assert_geq(n, 0);
	if (len)
		*len = n;
	return buf;
}

static int64_t doc_int(const struct doc *d, const char *path)
{
	int64_t v;
	int i = doc_at(d, path);

	cr_assert_geq(i, 0, "no %s", path);
	cr_assert_eq(tpo_json_get_int64(d->js, &d->t[i], &v), 0, "%s not an int", path);
	return v;
}

static int doc_null(const struct doc *d, const char *path)
{
	int i = doc_at(d, path);

	cr_assert_geq(i, 0, "no %s", path);
	return tpo_json_is_null(d->js, &d->t[i]);
}

/* Checks "data: " + JSON + "\n\n" and parses the JSON. */
static void doc_event(struct doc *d, const char *ev, size_t len)
{
	cr_assert_geq(len, 8);
	cr_assert(strncmp(ev, "data: ", 6) == 0, "%s", ev);
	cr_assert(ev[len - 2] == '\n' && ev[len - 1] == '\n', "%s", ev);
	doc_parse(d, ev + 6, len - 8);
}

static const char nasty[] = "say \"hi\"\n\tback\\slash \x01\x1f caf\xc3\xa9 </script>";

Test(encode, chat_chunk_roundtrip)
{
	char buf[1024];
	struct doc d;
	int n, len;

	n = tpo_oai_chunk(buf, sizeof(buf), TPO_OAI_CHAT, "chatcmpl-1", 1700000000, "m\"odel",
			  nasty, sizeof(nasty) - 1, 1);
	cr_assert_gt(n, 0);
	cr_assert_eq((size_t)n, strlen(buf));
	doc_event(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "id", NULL), "chatcmpl-1");
	cr_assert_str_eq(doc_str(&d, "object", NULL), "chat.completion.chunk");
	cr_assert_eq(doc_int(&d, "created"), 1700000000);
	cr_assert_str_eq(doc_str(&d, "model", NULL), "m\"odel");
	cr_assert_eq(doc_int(&d, "choices.0.index"), 0);
	cr_assert_str_eq(doc_str(&d, "choices.0.delta.role", NULL), "assistant");
	const char *c = doc_str(&d, "choices.0.delta.content", &len);
	cr_assert_eq(len, (int)sizeof(nasty) - 1);
	cr_assert(memcmp(c, nasty, sizeof(nasty) - 1) == 0);
	cr_assert(doc_null(&d, "choices.0.finish_reason"));
	/* The raw SSE line must not contain a raw newline inside the JSON. */
	cr_assert_null(memchr(buf, '\n', (size_t)n - 2));
	free(d.t);

	n = tpo_oai_chunk(buf, sizeof(buf), TPO_OAI_CHAT, "chatcmpl-1", 1, "m", "x", 1, 0);
	doc_event(&d, buf, (size_t)n);
	cr_assert_lt(doc_at(&d, "choices.0.delta.role"), 0);
	cr_assert_str_eq(doc_str(&d, "choices.0.delta.content", NULL), "x");
	free(d.t);
}

/* A head made once and a tail per token give tpo_oai_chunk's bytes; the
 * largest head fits TPO_OAI_CHUNK_HEAD_MAX. */
Test(encode, chunk_head_then_tails)
{
	char head[TPO_OAI_CHUNK_HEAD_MAX], a[1024], b[1024], model[TPO_OAI_MODEL_MAX], id[32];
	const char *toks[] = { "tok", "\"q\"\n", "" };
	int h, n, m;

	for (int kind = TPO_OAI_CHAT; kind <= TPO_OAI_COMPLETION; kind++) {
		h = tpo_oai_chunk_head(head, sizeof(head), kind, "chatcmpl-7", 42, "m\\x");
		cr_assert_gt(h, 0);
		cr_assert_eq((size_t)h, strlen(head));
		for (size_t i = 0; i < sizeof(toks) / sizeof(toks[0]); i++) {
			memcpy(b, head, (size_t)h);
			n = tpo_oai_chunk_tail(b, sizeof(b), (size_t)h, kind, toks[i],
					       strlen(toks[i]), i == 0);
			m = tpo_oai_chunk(a, sizeof(a), kind, "chatcmpl-7", 42, "m\\x", toks[i],
					  strlen(toks[i]), i == 0);
			cr_assert_gt(m, 0);
			cr_assert_eq(n, m);
			cr_assert_str_eq(b, a);
		}
		/* No room after the head: an error, not a cut chunk. */
		cr_assert_eq(tpo_oai_chunk_tail(b, (size_t)h + 8, (size_t)h, kind, "tok", 3, 0),
			     -ENOSPC);
	}
	memset(model, 0x01, sizeof(model) - 1);      /* each escapes to \u0001 */
	model[sizeof(model) - 1] = 0;
	cr_assert_gt(tpo_oai_make_id(id, sizeof(id), TPO_OAI_COMPLETION, UINT64_MAX), 0);
	cr_assert_gt(tpo_oai_chunk_head(head, sizeof(head), TPO_OAI_COMPLETION, id, INT64_MIN,
					model), 0);
	cr_assert_gt(tpo_oai_make_id(id, sizeof(id), TPO_OAI_CHAT, UINT64_MAX), 0);
	cr_assert_gt(tpo_oai_chunk_head(head, sizeof(head), TPO_OAI_CHAT, id, INT64_MIN, model), 0);
}

Test(encode, completion_chunk)
{
	char buf[512];
	struct doc d;
	int n = tpo_oai_chunk(buf, sizeof(buf), TPO_OAI_COMPLETION, "cmpl-9", 5, "m",
			      "tok\n", 4, 1);

	doc_event(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "object", NULL), "text_completion");
	cr_assert_str_eq(doc_str(&d, "choices.0.text", NULL), "tok\n");
	cr_assert_eq(doc_int(&d, "choices.0.index"), 0);
	cr_assert(doc_null(&d, "choices.0.finish_reason"));
	free(d.t);
}

Test(encode, final_chunk_without_usage)
{
	char buf[512];
	struct doc d;
	int n = tpo_oai_final_chunk(buf, sizeof(buf), TPO_OAI_CHAT, "chatcmpl-2", 7, "m",
				    "length", 10, 20, 0);

	cr_assert_gt(n, 0);
	cr_assert_null(strstr(buf, "usage"));
	doc_event(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "choices.0.finish_reason", NULL), "length");
	int di = doc_at(&d, "choices.0.delta");
	cr_assert_eq(d.t[di].type, JSMN_OBJECT);
	cr_assert_eq(d.t[di].size, 0);
	free(d.t);
}

Test(encode, final_chunk_with_usage)
{
	char buf[1024];
	struct doc d;
	int n = tpo_oai_final_chunk(buf, sizeof(buf), TPO_OAI_COMPLETION, "cmpl-2", 7, "m",
				    NULL, 10, 20, 1);
	char *second;

	cr_assert_gt(n, 0);
	second = strstr(buf, "\n\ndata: ");
	cr_assert_not_null(second);
	second += 2;
	doc_event(&d, buf, (size_t)(second - buf));
	cr_assert_str_eq(doc_str(&d, "choices.0.finish_reason", NULL), "stop");
	cr_assert_str_eq(doc_str(&d, "choices.0.text", NULL), "");
	free(d.t);
	doc_event(&d, second, strlen(second));
	int ci = doc_at(&d, "choices");
	cr_assert_eq(d.t[ci].type, JSMN_ARRAY);
	cr_assert_eq(d.t[ci].size, 0);
	cr_assert_eq(doc_int(&d, "usage.prompt_tokens"), 10);
	cr_assert_eq(doc_int(&d, "usage.completion_tokens"), 20);
	cr_assert_eq(doc_int(&d, "usage.total_tokens"), 30);
	free(d.t);
	cr_assert_str_eq(TPO_OAI_DONE, "data: [DONE]\n\n");
	cr_assert_eq(TPO_OAI_DONE_LEN, 14);
}

Test(encode, full_response_chat_and_completion)
{
	char buf[1024];
	struct doc d;
	int n, len;

	n = tpo_oai_full_response(buf, sizeof(buf), TPO_OAI_CHAT, "chatcmpl-3", 42, "m",
				  nasty, sizeof(nasty) - 1, "stop", 4294967295u, 1);
	cr_assert_gt(n, 0);
	doc_parse(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "object", NULL), "chat.completion");
	cr_assert_str_eq(doc_str(&d, "choices.0.message.role", NULL), "assistant");
	const char *c = doc_str(&d, "choices.0.message.content", &len);
	cr_assert_eq(len, (int)sizeof(nasty) - 1);
	cr_assert(memcmp(c, nasty, sizeof(nasty) - 1) == 0);
	cr_assert_str_eq(doc_str(&d, "choices.0.finish_reason", NULL), "stop");
	cr_assert_eq(doc_int(&d, "usage.total_tokens"), 4294967296LL);
	free(d.t);

	n = tpo_oai_full_response(buf, sizeof(buf), TPO_OAI_COMPLETION, "cmpl-3", 42, "m",
				  "done", 4, "length", 3, 4);
	doc_parse(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "object", NULL), "text_completion");
	cr_assert_str_eq(doc_str(&d, "choices.0.text", NULL), "done");
	cr_assert_str_eq(doc_str(&d, "choices.0.finish_reason", NULL), "length");
	cr_assert_eq(doc_int(&d, "usage.prompt_tokens"), 3);
	cr_assert_eq(doc_int(&d, "usage.total_tokens"), 7);
	free(d.t);
}

Test(encode, error_body_and_event)
{
	char buf[512];
	struct doc d;
	int n;

	n = tpo_oai_error_body(buf, sizeof(buf), "Invalid type for 'x': \"bad\"\n", NULL, NULL, NULL);
	cr_assert_gt(n, 0);
	doc_parse(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "error.message", NULL), "Invalid type for 'x': \"bad\"\n");
	cr_assert_str_eq(doc_str(&d, "error.type", NULL), "invalid_request_error");
	cr_assert(doc_null(&d, "error.param"));
	cr_assert(doc_null(&d, "error.code"));
	free(d.t);
	cr_assert_str_eq(buf, "{\"error\":{\"message\":\"Invalid type for 'x': \\\"bad\\\"\\n\","
			 "\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}");

	n = tpo_oai_error_event(buf, sizeof(buf), "upstream died", "server_error", "model",
				"worker_crash");
	doc_event(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "error.message", NULL), "upstream died");
	cr_assert_str_eq(doc_str(&d, "error.type", NULL), "server_error");
	cr_assert_str_eq(doc_str(&d, "error.param", NULL), "model");
	cr_assert_str_eq(doc_str(&d, "error.code", NULL), "worker_crash");
	free(d.t);
}

Test(encode, models_list)
{
	char buf[512];
	struct doc d;
	const char *names[] = { "mock", "llama-3-8b" };
	int n = tpo_oai_models(buf, sizeof(buf), names, 2, 1700000000);

	doc_parse(&d, buf, (size_t)n);
	cr_assert_str_eq(doc_str(&d, "object", NULL), "list");
	cr_assert_eq(d.t[doc_at(&d, "data")].size, 2);
	cr_assert_str_eq(doc_str(&d, "data.0.id", NULL), "mock");
	cr_assert_str_eq(doc_str(&d, "data.1.id", NULL), "llama-3-8b");
	cr_assert_str_eq(doc_str(&d, "data.1.object", NULL), "model");
	cr_assert_str_eq(doc_str(&d, "data.1.owned_by", NULL), "tpo");
	cr_assert_eq(doc_int(&d, "data.0.created"), 1700000000);
	free(d.t);

	n = tpo_oai_models(buf, sizeof(buf), NULL, 0, 1);
	cr_assert_str_eq(buf, "{\"object\":\"list\",\"data\":[]}");
	cr_assert_eq(n, (int)strlen(buf));
}

/* Every encoder fails with -ENOSPC below its length + 1 and fits at it. */
Test(encode, enospc_at_every_size)
{
	char full[1024], buf[1024];
	const char *names[] = { "a", "b\"c" };

	for (int e = 0; e < 6; e++) {
		int n = 0;

		for (size_t cap = 0; cap <= sizeof(full); cap++) {
			char *out = cap == sizeof(full) ? full : buf;
			int r = 0;

			switch (e) {
			case 0: r = tpo_oai_chunk(out, cap, TPO_OAI_CHAT, "id", 1, "m", nasty,
						  sizeof(nasty) - 1, 1); break;
			case 1: r = tpo_oai_final_chunk(out, cap, TPO_OAI_CHAT, "id", 1, "m",
							"stop", 1, 2, 1); break;
			case 2: r = tpo_oai_full_response(out, cap, TPO_OAI_COMPLETION, "id", 1,
							  "m", nasty, sizeof(nasty) - 1,
							  "stop", 1, 2); break;
			case 3: r = tpo_oai_error_body(out, cap, nasty, NULL, "p", NULL); break;
			case 4: r = tpo_oai_error_event(out, cap, nasty, NULL, NULL, "c"); break;
			case 5: r = tpo_oai_models(out, cap, names, 2, 1); break;
			}
			if (cap == sizeof(full)) {
				n = r;
				break;
			}
			if (r >= 0) {
				cr_assert_eq((size_t)r + 1, cap, "encoder %d fits at %zu with %d", e,
					     cap, r);
				n = r;
				break;
			}
			cr_assert_eq(r, -ENOSPC, "encoder %d cap %zu", e, cap);
		}
		cr_assert_gt(n, 0, "encoder %d", e);
	}
}

Test(encode, make_id)
{
	char buf[32];

	cr_assert_eq(tpo_oai_make_id(buf, sizeof(buf), TPO_OAI_CHAT, 0x0102030405060708ull), 25);
	cr_assert_str_eq(buf, "chatcmpl-0102030405060708");
	cr_assert_eq(tpo_oai_make_id(buf, sizeof(buf), TPO_OAI_COMPLETION, 255), 21);
	cr_assert_str_eq(buf, "cmpl-00000000000000ff");
	cr_assert_eq(tpo_oai_make_id(buf, 21, TPO_OAI_COMPLETION, 255), -ENOSPC);
}
