/*
 * fsm.c — restart / circuit-breaker state machine (see fsm.h for the table).
 *
 * Pure: everything the machine needs (time, randomness) comes in as
 * arguments, so no function here may make a system call.
 */
#include "supervisor/fsm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define PROBE_OK_DEFAULT_MS 10000u

/* The parameters after clamping, so step() never divides by zero or overflows. */
struct eff {
	uint64_t base, cap, jitter, stable, window, open, open_max, probe_ok;
	uint32_t max_restarts;
};

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static void eff_load(struct eff *e, const struct tpo_fsm_params *p)
{
	e->cap = min_u64(p->cap_ms, TPO_FSM_CAP_MAX_MS);
	e->base = min_u64(p->base_ms ? p->base_ms : 1, e->cap ? e->cap : 1);
	if (e->cap < e->base)
		e->cap = e->base;
	e->jitter = min_u64(p->jitter_pct, 100);
	e->stable = p->stable_ms ? p->stable_ms : 1;
	e->window = p->window_ms ? p->window_ms : 1;
	e->open = p->open_ms ? p->open_ms : 1;
	e->open_max = p->open_max_ms < e->open ? e->open : p->open_max_ms;
	e->probe_ok = p->probe_ok_ms ? p->probe_ok_ms
				     : min_u64(e->stable, PROBE_OK_DEFAULT_MS);
	e->probe_ok = min_u64(e->probe_ok, e->stable);
	e->max_restarts = p->max_restarts > TPO_FSM_RESTARTS_MAX ?
			  TPO_FSM_RESTARTS_MAX : p->max_restarts;
}

void tpo_fsm_params_default(struct tpo_fsm_params *p)
{
	p->base_ms = 100;
	p->cap_ms = 30000;
	p->jitter_pct = 20;
	p->stable_ms = 60000;
	p->max_restarts = 5;
	p->window_ms = 60000;
	p->open_ms = 30000;
	p->open_max_ms = 300000;
	p->probe_ok_ms = 0;
}

static int bad(char *err, size_t errlen, const char *what)
{
	if (err && errlen)
		snprintf(err, errlen, "%s", what);
	return -EINVAL;
}

int tpo_fsm_params_check(const struct tpo_fsm_params *p, char *err, size_t errlen)
{
	if (p->base_ms < 1)
		return bad(err, errlen, "base_ms must be at least 1");
	if (p->cap_ms < p->base_ms || p->cap_ms > TPO_FSM_CAP_MAX_MS)
		return bad(err, errlen, "cap_ms must be between base_ms and 86400000");
	if (p->jitter_pct > 100)
		return bad(err, errlen, "jitter_pct must be between 0 and 100");
	if (p->stable_ms < 1)
		return bad(err, errlen, "stable_ms must be at least 1");
	if (p->max_restarts > TPO_FSM_RESTARTS_MAX)
		return bad(err, errlen, "max_restarts must be between 0 and 63");
	if (p->window_ms < 1)
		return bad(err, errlen, "window_ms must be at least 1");
	if (p->open_ms < 1)
		return bad(err, errlen, "open_ms must be at least 1");
	if (p->open_max_ms < p->open_ms)
		return bad(err, errlen, "open_max_ms must be at least open_ms");
	if (p->probe_ok_ms > p->stable_ms)
		return bad(err, errlen, "probe_ok_ms must not exceed stable_ms");
	return 0;
}

void tpo_fsm_init(struct tpo_fsm *f)
{
	memset(f, 0, sizeof(*f));
	f->state = TPO_FSM_STOPPED;
}

static uint64_t delay_eff(const struct eff *e, uint32_t n, uint32_t rand32)
{
	uint64_t d = e->base, j, off;

	/* d stays below 2·cap <= 2^28: the shift cannot overflow. */
	for (uint32_t i = 1; i < n && d < e->cap; i++)
		d <<= 1;
	d = min_u64(d, e->cap);
	/* Linear in rand32 from d − j to d + j, both ends exact; 2j < 2^28. */
	j = d * e->jitter / 100;
	off = (uint64_t)rand32 * (2 * j) / UINT32_MAX;
	return d - j + off;
}

uint64_t tpo_fsm_delay_ms(const struct tpo_fsm_params *p, uint32_t n, uint32_t rand32)
{
	struct eff e;

	eff_load(&e, p);
	return delay_eff(&e, n, rand32);
}

static uint64_t open_eff(const struct eff *e, uint32_t k)
{
	return min_u64(e->open * (uint64_t)(k ? k : 1), e->open_max);
}

uint64_t tpo_fsm_open_ms(const struct tpo_fsm_params *p, uint32_t k)
{
	struct eff e;

	eff_load(&e, p);
	return open_eff(&e, k);
}

const char *tpo_fsm_state_name(int state)
{
	static const char *const names[] = {
		[TPO_FSM_STOPPED] = "stopped",
		[TPO_FSM_RUNNING] = "running",
		[TPO_FSM_BACKOFF] = "backoff",
		[TPO_FSM_OPEN] = "open",
		[TPO_FSM_HALF_OPEN] = "half-open",
		[TPO_FSM_FAILED] = "failed",
		[TPO_FSM_STOPPING] = "stopping",
	};

	if (state < 0 || (size_t)state >= sizeof(names) / sizeof(names[0]))
		return "unknown";
	return names[state];
}

static void hist_clear(struct tpo_fsm *f)
{
	f->hist_head = 0;
	f->hist_len = 0;
}

/* Records a restart at now; returns how many lie within the last window. */
static uint32_t hist_add(struct tpo_fsm *f, uint64_t now, uint64_t window)
{
	uint32_t in = 0;

	f->hist[f->hist_head] = now;
	f->hist_head = (f->hist_head + 1) % TPO_FSM_RING;
	if (f->hist_len < TPO_FSM_RING)
		f->hist_len++;
	for (uint32_t i = 0; i < f->hist_len; i++) {
		uint64_t t = f->hist[(f->hist_head + TPO_FSM_RING - 1 - i) % TPO_FSM_RING];
		if (now - t < window)
			in++;
	}
	return in;
}

static enum tpo_fsm_action spawn(struct tpo_fsm *f, const struct eff *e,
				 int state, uint64_t now, int is_restart)
{
	f->state = state;
	f->started_at = now;
	f->deadline = now + (state == TPO_FSM_HALF_OPEN ? e->probe_ok : e->stable);
	if (is_restart)
		f->restarts++;
	return TPO_ACT_SPAWN;
}

static enum tpo_fsm_action open_circuit(struct tpo_fsm *f, const struct eff *e,
					uint64_t now)
{
	f->k++;
	f->state = TPO_FSM_OPEN;
	f->deadline = now + open_eff(e, f->k);
	hist_clear(f);
	return TPO_ACT_ARM_TIMER;
}

static void forget(struct tpo_fsm *f)
{
	f->n = 0;
	f->k = 0;
	hist_clear(f);
}

/* HALF_OPEN → RUNNING once the probe has lived probe_ok_ms. */
static enum tpo_fsm_action probe_ok(struct tpo_fsm *f, const struct eff *e)
{
	f->state = TPO_FSM_RUNNING;
	f->n = 0;
	hist_clear(f);
	f->deadline = f->started_at + e->stable;
	return TPO_ACT_ARM_TIMER;
}

/* The process of a RUNNING or HALF_OPEN unit ended outside shutdown. */
static enum tpo_fsm_action on_exit(struct tpo_fsm *f, const struct eff *e,
				   const struct tpo_fsm_event *ev, uint64_t now,
				   uint32_t rand32)
{
	uint64_t ran = now - f->started_at;

	f->last_code = ev->signo > 0 ? -ev->signo : ev->code;
	if (ev->signo <= 0 && ev->code == TPO_FSM_EX_CONFIG) {
		f->state = TPO_FSM_FAILED;
		f->deadline = 0;
		return TPO_ACT_NONE;
	}
	if (f->state == TPO_FSM_HALF_OPEN) {
		if (ran < e->probe_ok) {
			f->n++;
			return open_circuit(f, e, now);
		}
		/* The probe succeeded; its TIMER has not been seen yet. */
		probe_ok(f, e);
	}
	if (ran >= e->stable) {
		f->n = 0;
		f->k = 0;
	}
	f->n++;
	if (hist_add(f, now, e->window) > e->max_restarts)
		return open_circuit(f, e, now);
	f->state = TPO_FSM_BACKOFF;
	f->deadline = now + delay_eff(e, f->n, rand32);
	return TPO_ACT_ARM_TIMER;
}

static enum tpo_fsm_action on_timer(struct tpo_fsm *f, const struct eff *e, uint64_t now)
{
	if (f->deadline == 0 || now < f->deadline)
		return TPO_ACT_NONE;
	switch (f->state) {
	case TPO_FSM_RUNNING:
		f->n = 0;
		f->k = 0;
		f->deadline = 0;
		return TPO_ACT_NONE;
	case TPO_FSM_BACKOFF:
		return spawn(f, e, TPO_FSM_RUNNING, now, 1);
	case TPO_FSM_OPEN:
		return spawn(f, e, TPO_FSM_HALF_OPEN, now, 1);
	case TPO_FSM_HALF_OPEN:
		return probe_ok(f, e);
	default:
		f->deadline = 0;
		return TPO_ACT_NONE;
	}
}

static enum tpo_fsm_action on_shutdown(struct tpo_fsm *f)
{
	switch (f->state) {
	case TPO_FSM_RUNNING:
	case TPO_FSM_HALF_OPEN:
		f->state = TPO_FSM_STOPPING;
		f->deadline = 0;
		return TPO_ACT_KILL;
	case TPO_FSM_STOPPING:
		return TPO_ACT_NONE;
	default:
		f->state = TPO_FSM_STOPPED;
		f->deadline = 0;
		return TPO_ACT_STOPPED;
	}
}

static enum tpo_fsm_action on_reset(struct tpo_fsm *f, const struct eff *e, uint64_t now)
{
	switch (f->state) {
	case TPO_FSM_BACKOFF:
	case TPO_FSM_OPEN:
	case TPO_FSM_FAILED:
		forget(f);
		return spawn(f, e, TPO_FSM_RUNNING, now, 1);
	case TPO_FSM_RUNNING:
		forget(f);
		return TPO_ACT_NONE;
	case TPO_FSM_HALF_OPEN:
		forget(f);
		f->state = TPO_FSM_RUNNING;
		f->deadline = f->started_at + e->stable;
		return TPO_ACT_ARM_TIMER;
	default:
		return TPO_ACT_NONE;
	}
}

enum tpo_fsm_action tpo_fsm_step(struct tpo_fsm *f, const struct tpo_fsm_params *p,
				 const struct tpo_fsm_event *ev, uint64_t now_ms,
				 uint32_t rand32, uint64_t *deadline_ms)
{
	enum tpo_fsm_action act = TPO_ACT_NONE;
	struct eff e;

	eff_load(&e, p);
	switch (ev->type) {
	case TPO_EV_START:
		if (f->state == TPO_FSM_STOPPED) {
			forget(f);
			act = spawn(f, &e, TPO_FSM_RUNNING, now_ms, 0);
		}
		break;
	case TPO_EV_EXIT:
		if (f->state == TPO_FSM_RUNNING || f->state == TPO_FSM_HALF_OPEN) {
			act = on_exit(f, &e, ev, now_ms, rand32);
		} else if (f->state == TPO_FSM_STOPPING) {
			f->last_code = ev->signo > 0 ? -ev->signo : ev->code;
			f->state = TPO_FSM_STOPPED;
			f->deadline = 0;
			act = TPO_ACT_STOPPED;
		}
		break;
	case TPO_EV_TIMER:
		act = on_timer(f, &e, now_ms);
		break;
	case TPO_EV_SHUTDOWN:
		act = on_shutdown(f);
		break;
	case TPO_EV_RESET:
		act = on_reset(f, &e, now_ms);
		break;
	default:
		break;
	}
	*deadline_ms = f->deadline;
	return act;
}
