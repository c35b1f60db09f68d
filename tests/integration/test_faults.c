/*
 * test_faults.c — a crashing model worker (issues 3 and 5): the infer
 * stage's in-flight journal turns a crash into exactly one clean error per
 * request, retries what had not started, and quarantines a poison prompt.
 */
#include "tests/integration/harness.h"

#include "shm/ring.h"
#include "shm/ringset.h"
#include "stagebin/proto.h"

#define FAULT_CFG \
	"{\"lanes\": 1, \"restart\": {\"base_ms\": 10, \"cap_ms\": 50}," \
	" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 8}}}}"

static struct h_inst in;

TestSuite(faults, .fini = h_cleanup, .timeout = 120);

static void wait_infer_restarts(const struct tpo_stats *st, uint32_t n, struct tpo_proc_snapshot *p)
{
	uint64_t end = h_now_ms() + H_HANG_MS;

	do {
		h_proc(st, TPO_STAGE_INFER, 0, p);
		if (p->restarts >= n && p->state == TPO_UNIT_RUNNING && p->child_pid == p->pid)
			return;
		h_sleep_ms(5);
	} while (h_now_ms() < end);
	cr_assert_fail("infer restarts %u (want %u), state %u", p->restarts, n, p->state);
}

static void still_serves(void)
{
	struct h_conn c;
	char body[512];
	uint64_t end = h_now_ms() + H_HANG_MS;

	h_chat_body(body, sizeof(body), "healthy [[tpo:tokens=3]]", 0, NULL);
	for (;;) {
		h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
		/* 503 while the lane's infer unit is restarting. */
		if (c.status != 503 || h_now_ms() > end)
			break;
		h_conn_free(&c);
		h_sleep_ms(10);
	}
	cr_assert_eq(c.status, 200, "status %d: %s", c.status, c.body);
	cr_assert(strstr(c.body, "\"completion_tokens\":3"), "%s", c.body);
	h_conn_free(&c);
}

Test(faults, crash_mid_stream_one_error_event)
{
	struct h_conn c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char body[512], ev[8192], errev[8192], want[64];
	int content = 0, errors = 0, done = 0, r;

	h_start(&in, "crash3", FAULT_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	/* A rate, so that each token is published before the next is due
	 * (a burst that crashes before it is published is retried instead). */
	h_chat_body(body, sizeof(body), "boom [[tpo:crash_after=3]] [[tpo:tokens=8]] [[tpo:tps=50]]",
		    1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	if (c.status != 200)
		h_read_body(&c);
	cr_assert_eq(c.status, 200, "status %d: %s", c.status, c.body ? c.body : "");
	while ((r = h_sse_next(&c, ev, sizeof(ev))) == 1) {
		cr_assert_eq(errors, 0, "event after the error event: %s", ev);
		if (!strcmp(ev, "[DONE]")) {
			done = 1;
		} else if (strstr(ev, "\"error\"")) {
			h_assert_oai_error(ev, "crashed");
			snprintf(errev, sizeof(errev), "%s", ev);
			errors++;
		} else {
			struct h_json j;
			cr_assert_eq(h_json_parse(&j, ev), 0);
			if (h_json_null(&j, "choices.0.finish_reason"))
				content++;
			h_json_free(&j);
		}
	}
	cr_assert_eq(r, 0, "stream did not end cleanly");
	cr_assert_eq(errors, 1);
	cr_assert_not(done);
	/* The crash comes with the 3rd token; what was published before it
	 * reached the client, and the error says exactly how much. */
	cr_assert(content >= 1 && content <= 3, "%d tokens before the crash", content);
	snprintf(want, sizeof(want), "after streaming %d tokens", content);
	cr_assert(strstr(errev, want), "error event %s, want '%s'", errev, want);
	h_conn_free(&c);
	wait_infer_restarts(&st, 1, &p);
	cr_assert_eq(p.last_signal, SIGABRT);
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(faults, crash_before_first_token_retried_then_quarantined)
{
	struct h_conn c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char body[512];

	h_start(&in, "quar", FAULT_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), "poison [[tpo:crash_after=0]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 500, "status %d: %s", c.status, c.body);
	h_assert_oai_error(c.body, "quarantined");
	h_conn_free(&c);
	/* First crash, retry, second crash: two restarts. */
	wait_infer_restarts(&st, 2, &p);
	cr_assert_eq(p.restarts, 2);
	still_serves();
	/* The same for a streaming request: an HTTP status, nothing streamed. */
	h_chat_body(body, sizeof(body), "poison again [[tpo:crash_after=0]]", 1, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 500, "status %d: %s", c.status, c.body);
	h_assert_oai_error(c.body, "quarantined");
	h_conn_free(&c);
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A request in flight beside a poison prompt (still waiting for its first
 * token at both crashes) is retried, not quarantined with it: a crash is
 * charged to the request whose worker call was running.
 */
Test(faults, bystander_of_a_poison_prompt_is_not_quarantined)
{
	struct h_conn q, c;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char body[512];

	h_start(&in, "bystand", FAULT_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	/* Q: its first token 3 s after each (re)start: silent at both crashes. */
	h_chat_body(body, sizeof(body), "bystander [[tpo:delay_ms=3000]] [[tpo:tokens=3]]", 0, NULL);
	h_begin(&q, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 1), 1, "Q never reached infer");
	h_chat_body(body, sizeof(body), "poison [[tpo:crash_after=0]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 500, "status %d: %s", c.status, c.body);
	h_assert_oai_error(c.body, "quarantined");
	h_conn_free(&c);
	wait_infer_restarts(&st, 2, &p);
	cr_assert_eq(p.restarts, 2);
	h_await_answer(&q, "the bystander", 3);
	h_conn_free(&q);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * At-least-once between stages: a stage that dies after committing a
 * record but before releasing its input makes its successor produce that
 * record again. Emulated exactly: assemble is frozen, the PROMPT it produced
 * for a streaming request is committed into the assemble -> infer ring a
 * second time (as its restarted successor would), and assemble is killed.
 * The client must still get every token exactly once.
 */
Test(faults, redelivered_prompt_is_not_streamed_twice)
{
	const char *prompt = "twice [[tpo:tps=40]] [[tpo:tokens=20]]";
	static uint8_t copy[1 << 16];
	struct h_conn c;
	struct h_json j;
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	struct tpo_ringset rs;
	struct tpo_ring prod;
	struct tpo_ring_shm *shm;
	struct tpo_rec *rec, *orig = NULL;
	char body[512], ref[8192], text[8192], fin[32], idhex[32];
	uint64_t id, pos, head, mask;
	uint8_t *data;
	int64_t usage;
	uint64_t end;

	h_start(&in, "redel", FAULT_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), prompt, 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 200);
	cr_assert_eq(h_json_parse(&j, c.body), 0);
	cr_assert_gt(h_json_str(&j, "choices.0.message.content", ref, sizeof(ref)), 0);
	h_json_free(&j);
	h_conn_free(&c);

	h_chat_body(body, sizeof(body), prompt, 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	cr_assert(h_header(&c, "x-request-id", idhex, sizeof(idhex)));
	id = strtoull(idhex, NULL, 16);

	h_proc(&st, TPO_STAGE_ASSEMBLE, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGSTOP), 0);
	/* Infer keeps the PROMPT in its input ring until the job ends. */
	cr_assert_eq(tpo_ringset_attach(&rs, in.name), 0);
	shm = tpo_ringset_find(&rs, TPO_ST_ASSEMBLE, 0, TPO_ST_INFER, 0);
	cr_assert_not_null(shm);
	data = (uint8_t *)shm + TPO_RING_HDR_SIZE;
	mask = shm->capacity - 1;
	head = atomic_load(&shm->head);
	for (pos = atomic_load(&shm->tail); pos < head; ) {
		rec = (struct tpo_rec *)(data + (pos & mask));
		if (rec->type == TPO_REC_PAD) {
			pos += rec->len;
			continue;
		}
		if (rec->type == TPO_MSG_PROMPT && rec->req_id == id) {
			orig = rec;
			break;
		}
		pos += tpo_rec_size(rec->len);
	}
	cr_assert_not_null(orig, "the PROMPT of %s is not in infer's ring", idhex);
	cr_assert_leq(TPO_REC_HDR_SIZE + orig->len, sizeof(copy));
	memcpy(copy, orig, TPO_REC_HDR_SIZE + orig->len);
	/* What a restarted assemble would produce again. */
	cr_assert_eq(tpo_ring_open_producer(&prod, shm, -1), 0);
	cr_assert_eq(tpo_ring_reserve(&prod, orig->len, &rec), 0);
	memcpy(tpo_rec_data(rec), copy + TPO_REC_HDR_SIZE, ((struct tpo_rec *)copy)->len);
	rec->type = TPO_MSG_PROMPT;
	rec->req_id = id;
	rec->aux = ((struct tpo_rec *)copy)->aux;
	rec->seq = 0;
	rec->ts_ns = tpo_now_ns();
	tpo_ring_commit(&prod);
	tpo_ringset_close(&rs);
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);
	end = h_now_ms() + H_HANG_MS;
	do {
		h_proc(&st, TPO_STAGE_ASSEMBLE, 0, &p);
		if (p.pid != p0.pid && p.state == TPO_UNIT_RUNNING)
			break;
		h_sleep_ms(5);
	} while (h_now_ms() < end);
	cr_assert_neq(p.pid, p0.pid);

	cr_assert_eq(h_read_stream(&c, 1, text, sizeof(text), fin, sizeof(fin), &usage), 20);
	cr_assert_str_eq(text, ref, "streamed \"%s\", want \"%s\"", text, ref);
	cr_assert_eq(usage, 20);
	h_conn_free(&c);
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A front killed with its clients leaves their requests running in the lane;
 * its replacement receives their tokens, holds no such request, and tells
 * the lane to stop: inference ends long before the answer would have.
 */
Test(faults, killed_front_stops_its_inference)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p, p0;
	struct h_conn c;
	static char body[512], ev[1 << 16];

	h_start(&in, "orphan",
		"{\"lanes\": 1, \"restart\": {\"base_ms\": 10},"
		" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 20}},"
		" \"post\": {\"max_tokens\": 100000}}}");
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	/* 5000 tokens at 20 a second: over four minutes if nothing stops it. */
	h_chat_body(body, sizeof(body), "a long answer [[tpo:tokens=5000]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	cr_assert_eq(h_sse_next(&c, ev, sizeof(ev)), 1, "no first token");
	h_proc(&st, TPO_STAGE_INFER, 0, &p);
	cr_assert_eq(p.in_flight, 1);
	h_proc(&st, TPO_STAGE_STREAM, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 0), 0, "the killed front's request still runs in infer");
	h_proc(&st, TPO_STAGE_STREAM, 0, &p);
	cr_assert_neq(p.pid, p0.pid, "the front was not replaced");
	h_conn_free(&c);
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * The oldest record in ring shm whose consumer is stopped, once one is
 * there (a padding record at the wrap skipped); *pos, if asked, its
 * position. what names the record in the failure message.
 */
static struct tpo_rec *oldest_record(struct tpo_ring_shm *shm, const char *what, uint64_t *pos)
{
	uint64_t end = h_now_ms() + H_HANG_MS, tail = atomic_load(&shm->tail);
	uint64_t at = tail;
	struct tpo_rec *rec;

	while (atomic_load(&shm->head) == tail && h_now_ms() < end)
		h_sleep_ms(2);
	cr_assert_neq(atomic_load(&shm->head), tail, "no %s reached the ring", what);
	rec = (struct tpo_rec *)((uint8_t *)shm + TPO_RING_HDR_SIZE + (at & (shm->capacity - 1)));
	if (rec->type == TPO_REC_PAD) {
		at = (at | (shm->capacity - 1)) + 1;
		rec = (struct tpo_rec *)((uint8_t *)shm + TPO_RING_HDR_SIZE);
	}
	if (pos)
		*pos = at;
	return rec;
}

/*
 * A record that a stage was processing when it died, twice
 * (restart.quarantine_after), is not handed to its replacement a third time:
 * its request ends with one 500 and the lane goes on. The first death is
 * written into the ring (the record's attempt count), the second is real:
 * assemble killed with its busy word naming the record.
 */
Test(faults, record_that_kills_a_stage_twice_is_quarantined)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	struct tpo_ringset rs;
	struct tpo_ring_shm *shm;
	struct tpo_rec *rec;
	struct h_conn c;
	char body[512];
	uint64_t pos;

	h_start(&in, "quarst", FAULT_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	h_proc(&st, TPO_STAGE_ASSEMBLE, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGSTOP), 0);
	h_chat_body(body, sizeof(body), "a record that kills", 0, NULL);
	h_begin(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(tpo_ringset_attach(&rs, in.name), 0);
	shm = tpo_ringset_find(&rs, TPO_ST_STREAM, 0, TPO_ST_ASSEMBLE, 0);
	cr_assert_not_null(shm);
	rec = oldest_record(shm, "REQ", &pos);
	cr_assert_eq(rec->type, TPO_MSG_REQ);
	rec->attempt = 1;                               /* one death already */
	atomic_store(&shm->busy, pos + 1);              /* in hand at the next */
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);
	tpo_ringset_close(&rs);

	cr_assert_eq(h_read_head(&c), 0);
	cr_assert_eq(c.status, 500, "status %d", c.status);
	cr_assert_eq(h_read_body(&c), 0);
	h_assert_oai_error(c.body, "quarantined");
	h_conn_free(&c);
	h_proc(&st, TPO_STAGE_ASSEMBLE, 0, &p);
	cr_assert_neq(p.pid, p0.pid, "assemble was not restarted");
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * The same in post, which keeps per-request state: its BEGIN quarantined,
 * the request's TOKENs and END that follow are dropped, not each taken for
 * a request post never saw begin (one more error apiece, after the ERROR).
 */
Test(faults, quarantined_begin_in_post_drops_the_rest)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	struct tpo_ringset rs;
	struct tpo_ring_shm *shm;
	struct tpo_rec *rec;
	struct h_conn c;
	char body[512];
	uint64_t pos, end;

	h_start(&in, "quarpost", FAULT_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	h_proc(&st, TPO_STAGE_POST, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGSTOP), 0);
	h_chat_body(body, sizeof(body), "three [[tpo:tokens=3]]", 0, NULL);
	h_begin(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(tpo_ringset_attach(&rs, in.name), 0);
	shm = tpo_ringset_find(&rs, TPO_ST_INFER, 0, TPO_ST_POST, 0);
	cr_assert_not_null(shm);
	rec = oldest_record(shm, "BEGIN", &pos);
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 0), 0, "infer never finished");
	cr_assert_eq(rec->type, TPO_MSG_BEGIN);
	rec->attempt = 1;
	atomic_store(&shm->busy, pos + 1);
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);

	cr_assert_eq(h_read_head(&c), 0);
	cr_assert_eq(c.status, 500, "status %d", c.status);
	cr_assert_eq(h_read_body(&c), 0);
	h_assert_oai_error(c.body, "quarantined");
	h_conn_free(&c);
	/* The rest of the request went through the new post: dropped. */
	end = h_now_ms() + H_HANG_MS;
	while (atomic_load(&shm->tail) != atomic_load(&shm->head) && h_now_ms() < end)
		h_sleep_ms(2);
	cr_assert_eq(atomic_load(&shm->tail), atomic_load(&shm->head));
	tpo_ringset_close(&rs);
	h_proc(&st, TPO_STAGE_POST, 0, &p);
	cr_assert_neq(p.pid, p0.pid, "post was not restarted");
	cr_assert_eq(p.errors, 0, "post answered %llu records after the ERROR",
		     (unsigned long long)p.errors);
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A REQ record whose lengths add up only when summed in 32 bits (a buggy
 * stage before assemble, a user's among them, or a scribbled ring) ends its
 * request with one clean 500; assemble does not follow the lengths 2 GiB past
 * the record, and the lane goes on serving.
 */
Test(faults, malformed_request_record_is_an_error_not_a_crash)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	struct tpo_ringset rs;
	struct tpo_ring_shm *shm;
	struct tpo_msg_req *m;
	struct tpo_rec *rec;
	struct h_conn c;
	char body[512];

	h_start(&in, "malreq", FAULT_CFG);
	h_stats_attach(&in, &st);
	h_proc(&st, TPO_STAGE_ASSEMBLE, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGSTOP), 0);
	h_chat_body(body, sizeof(body), "scribbled on", 0, NULL);
	h_begin(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));

	/* The front's REQ waits in assemble's input ring: scribble on it. */
	cr_assert_eq(tpo_ringset_attach(&rs, in.name), 0);
	shm = tpo_ringset_find(&rs, TPO_ST_STREAM, 0, TPO_ST_ASSEMBLE, 0);
	cr_assert_not_null(shm);
	rec = oldest_record(shm, "REQ", NULL);
	cr_assert_eq(rec->type, TPO_MSG_REQ);
	m = tpo_rec_data(rec);
	cr_assert(tpo_msg_req_ok(rec));
	m->text_len += 0x80000000u;
	m->ctx_len += 0x80000000u;
	cr_assert_eq(tpo_msg_req_size(m), rec->len, "a 32-bit sum still adds up");
	tpo_ringset_close(&rs);
	cr_assert_eq(kill(p0.pid, SIGCONT), 0);

	cr_assert_eq(h_read_head(&c), 0);
	cr_assert_eq(c.status, 500);
	cr_assert_eq(h_read_body(&c), 0);
	h_assert_oai_error(c.body, "malformed REQ record");
	h_conn_free(&c);
	h_proc(&st, TPO_STAGE_ASSEMBLE, 0, &p);
	cr_assert_eq(p.pid, p0.pid, "assemble was restarted");
	still_serves();
	tpo_stats_close(&st);
	h_stop(&in);
}
