/*
 * tpo-assemble — prompt assembly: REQ (messages + context) in, PROMPT out.
 *
 * Fills stages.assemble.template ({context}, {messages}) and enforces the
 * prompt budget (max_prompt_bytes): retrieved context is trimmed to fit
 * (at a UTF-8 character boundary); if the messages alone do not fit, the
 * request ends with 413 and a message saying by how much.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "stagebin/stage.h"
#include "stagebin/textproc.h"

/* The template filled with the first clen bytes of the context. */
static int fill(const struct tpo_stage *st, const struct tpo_msg_req *m, uint32_t clen,
		char *out, uint32_t room)
{
	return tpo_template_fill(st->cfg.stages.assemble.template,
				 tpo_msg_req_ctx(m), clen,
				 tpo_msg_req_text(m), m->text_len, out, room);
}

/* n, moved back so that s[0..n) does not end inside a UTF-8 character. */
static uint32_t utf8_cut(const char *s, uint32_t n)
{
	uint32_t k = n;

	while (k > 0 && ((uint8_t)s[k - 1] & 0xc0) == 0x80)
		k--;
	if (k > 0 && (uint8_t)s[k - 1] >= 0xc0) {
		uint8_t b = (uint8_t)s[k - 1];
		uint32_t len = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : 2;
		if (n - (k - 1) < len)
			return k - 1;  /* the last character is incomplete */
	}
	return n;
}

static int on_record(struct tpo_stage *st, int in, const struct tpo_rec *rec)
{
	const struct tpo_msg_req *m = tpo_rec_data(rec);
	uint32_t budget = st->cfg.stages.assemble.max_prompt_bytes;
	struct tpo_msg_req *o;
	struct tpo_rec *out;
	uint32_t room;
	int n, err;

	(void)in;
	if (rec->type != TPO_MSG_REQ)
		return tpo_stage_emit(st, 0, rec->type, rec->req_id, rec->seq, rec->aux,
				      tpo_rec_data(rec), rec->len);
	if (!tpo_msg_req_ok(rec)) {
		tpo_stats_count_error(&st->stats, st->stage, st->lane, 1);
		return tpo_stage_emit_error(st, 0, rec->req_id, rec->aux, 500,
					    "internal error: malformed REQ record");
	}
	room = st->out[0].max_len - (uint32_t)sizeof(*m) - m->stop_len;
	if (room > budget)
		room = budget;
	err = tpo_stage_reserve(st, 0, (uint32_t)sizeof(*m) + room + m->stop_len, &out);
	if (err < 0)
		return err;
	o = tpo_rec_data(out);
	n = fill(st, m, m->ctx_len, tpo_msg_req_text(o), room);
	if (n < 0 && m->ctx_len) {
		/* Over budget: trim the retrieved context, never the messages. */
		int bare = fill(st, m, 0, tpo_msg_req_text(o), room);
		uint32_t clen = bare >= 0 ? room - (uint32_t)bare : 0;

		if (clen > m->ctx_len)
			clen = m->ctx_len;
		while (clen > 0 && (n = fill(st, m, utf8_cut(tpo_msg_req_ctx(m), clen),
					     tpo_msg_req_text(o), room)) < 0)
			clen /= 2;    /* {context} appears more than once */
		if (n < 0 && bare >= 0)
			n = fill(st, m, 0, tpo_msg_req_text(o), room);
	}
	if (n < 0) {
		char msg[200];
		/* The reservation is simply not committed: it is overwritten. */
		tpo_ring_unreserve(&st->out[0], out);
		snprintf(msg, sizeof(msg), "prompt too long: %u bytes of messages and "
			 "context exceed the prompt budget of %u bytes",
			 m->text_len + m->ctx_len, budget);
		tpo_stats_count_error(&st->stats, st->stage, st->lane, 1);
		return tpo_stage_emit_error(st, 0, rec->req_id, rec->aux, 413, msg);
	}
	*o = *m;
	o->text_len = (uint32_t)n;
	o->ctx_len = 0;
	o->prompt_tokens = tpo_usage_estimate_tokens(tpo_msg_req_text(o), (size_t)n);
	memmove(tpo_msg_req_stops(o), tpo_msg_req_stops(m), m->stop_len);
	out->type = TPO_MSG_PROMPT;
	out->req_id = rec->req_id;
	out->aux = rec->aux;
	out->ts_ns = st->now_ns;
	/* Shrink the reservation to what the prompt took. */
	tpo_ring_shrink(&st->out[0], out, tpo_msg_req_size(o));
	tpo_stage_passed(st);
	return 0;
}

int main(int argc, char **argv)
{
	static struct tpo_stage st;
	int rc = tpo_stage_init(&st, TPO_ST_ASSEMBLE, argc, argv);

	if (rc)
		return rc;
	rc = tpo_stage_run(&st, on_record);
	tpo_stage_fini(&st);
	return rc;
}
