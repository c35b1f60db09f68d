/*
 * mock.c — the built-in mock model worker: deterministic tokens derived from
 * the prompt, at a configured rate, with fault injection for tests and demos.
 *
 * The answer is a sequence of words drawn by a PRNG seeded from a hash of
 * the prompt and the configured seed: the same prompt always gives the same
 * answer. Fault injection by markers anywhere in the prompt:
 *
 *   [[tpo:tokens=N]]       answer exactly N tokens (finish "stop")
 *   [[tpo:tps=N]]          N tokens per second for this request (0 = unlimited)
 *   [[tpo:crash_after=N]]  the infer process aborts after N tokens
 *   [[tpo:error=STATUS]]   end with that HTTP status before the first token
 *   [[tpo:stall]]          never answer (until deadline or cancel)
 *   [[tpo:delay_ms=N]]     the first token N ms after the request started
 *   [[tpo:utf8]]           tokens split multi-byte characters (tests post)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stagebin/proto.h"
#include "workers/worker.h"

#define BURST 256     /* most tokens one job emits per poll when unlimited */

struct mock {
	struct tpo_mock_params p;
};

struct mjob {
	uint64_t rng;
	uint32_t n;               /* tokens to emit */
	uint32_t sent;
	uint32_t tps;
	int32_t  crash_after;     /* -1: no */
	int      finish;
	int      utf8;
	uint64_t start_ns;
	uint64_t delay_ns;        /* before the first token */
};

static const char *const vocab[] = {
	" the", " pipeline", " streams", " tokens", " through", " five", " stages",
	" and", " every", " ring", " is", " bounded", " so", " nothing", " is", " lost",
	" when", " a", " worker", " crashes", ",", ".", " fast", " observable",
	" lanes", " keep", " requests", " on", " one", " core", " shared", " memory",
};
#define NVOCAB (sizeof(vocab) / sizeof(vocab[0]))
static const char utf8_word[] = " caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x80";

static uint64_t fnv1a(const char *s, size_t n, uint64_t h)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t next(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* Value of [[tpo:key=N]] in the prompt, or -1; "[[tpo:key]]" gives 0. */
static long marker(const struct tpo_job *job, const char *key)
{
	char pat[48];
	const char *p = job->prompt, *end = job->prompt + job->prompt_len;
	size_t n = (size_t)snprintf(pat, sizeof(pat), "[[tpo:%s", key);

	while (p && (size_t)(end - p) >= n) {
		p = memmem(p, (size_t)(end - p), pat, n);
		if (!p)
			break;
		p += n;
		if (p < end && *p == ']')
			return 0;
		if (p < end && *p == '=') {
			char *e;
			long v = strtol(p + 1, &e, 10);
			if (e < end && *e == ']')
				return v;
		}
	}
	return -1;
}

void *tpo_mock_create(const struct tpo_mock_params *p)
{
	struct mock *m = calloc(1, sizeof(*m));

	if (m)
		m->p = *p;
	return m;
}

void tpo_mock_destroy(void *w)
{
	free(w);
}

static int mock_start(void *w, struct tpo_job *job)
{
	struct mock *m = w;
	struct mjob *j = calloc(1, sizeof(*j));
	long v;

	if (!j)
		return -ENOMEM;
	job->worker_state = j;
	j->rng = fnv1a(job->prompt, job->prompt_len,
		       0xcbf29ce484222325ull ^ (uint64_t)m->p.seed ^ job->seed) | 1;
	j->n = m->p.max_tokens;
	j->finish = TPO_FINISH_STOP;
	if ((v = marker(job, "tokens")) >= 0)
		j->n = (uint32_t)v;
	if (job->max_tokens && job->max_tokens < j->n) {
		j->n = job->max_tokens;
		j->finish = TPO_FINISH_LENGTH;
	}
	j->tps = m->p.tokens_per_second;
	if ((v = marker(job, "tps")) >= 0)
		j->tps = (uint32_t)v;
	j->crash_after = (int32_t)marker(job, "crash_after");
	j->utf8 = marker(job, "utf8") >= 0;
	j->start_ns = 0;
	j->delay_ns = (v = marker(job, "delay_ms")) > 0 ? (uint64_t)v * 1000000ull : 0;
	if ((v = marker(job, "error")) >= 100 && v <= 599) {
		char msg[96];
		snprintf(msg, sizeof(msg), "mock model: injected error %ld", v);
		job->wake_ns = 0;
		job->sink->fail(job, (int)v, msg);
		return 0;
	}
	if (marker(job, "stall") >= 0) {
		job->wake_ns = 0;      /* nothing until cancel or deadline */
		return 0;
	}
	job->wake_ns = 1;          /* poll at once */
	return 0;
}

static void mock_poll(void *w, struct tpo_job *job, uint64_t now)
{
	struct mjob *j = job->worker_state;
	uint32_t due, burst = 0;

	(void)w;
	if (!j->start_ns)
		j->start_ns = now + j->delay_ns;
	if (now < j->start_ns) {
		job->wake_ns = j->start_ns;
		return;
	}
	if (j->tps) {
		uint64_t el = now - j->start_ns;
		due = (uint32_t)(el * j->tps / 1000000000ull) + 1;
		if (due > j->n)
			due = j->n;
	} else {
		due = j->n;
	}
	/* Fault injection: crash once the tokens before it were committed (they
	 * were emitted in an earlier round, and the stage flushes per round). */
	if (j->crash_after >= 0 && j->sent >= (uint32_t)j->crash_after)
		abort();
	while (j->sent < due && burst++ < BURST) {
		if (j->crash_after >= 0 && j->sent >= (uint32_t)j->crash_after) {
			job->wake_ns = now;   /* crash next round */
			return;
		}
		if (j->utf8) {
			/* Split a multi-byte word over two tokens. */
			size_t cut = (j->sent % 2) ? 5 : 0, len = (j->sent % 2) ? sizeof(utf8_word) - 1 - 5 : 5;
			if (job->sink->token(job, utf8_word + cut, len) < 0)
				return;
		} else {
			const char *t = vocab[next(&j->rng) % NVOCAB];
			if (job->sink->token(job, t, strlen(t)) < 0)
				return;
		}
		j->sent++;
	}
	if (j->crash_after >= 0 && j->sent >= (uint32_t)j->crash_after) {
		job->wake_ns = now;
		return;
	}
	if (j->sent >= j->n) {
		job->wake_ns = 0;
		job->sink->done(job, j->finish);
		return;
	}
	if (j->sent < due)
		job->wake_ns = now;    /* burst limit: continue next round */
	else
		job->wake_ns = j->start_ns + (uint64_t)j->sent * 1000000000ull / j->tps;
}

static void mock_cancel(void *w, struct tpo_job *job)
{
	(void)w;
	free(job->worker_state);
	job->worker_state = NULL;
	job->wake_ns = 0;
}

const struct tpo_worker_ops tpo_mock_ops = {
	.name = "mock",
	.start = mock_start,
	.poll = mock_poll,
	.cancel = mock_cancel,
	.destroy = tpo_mock_destroy,
};
