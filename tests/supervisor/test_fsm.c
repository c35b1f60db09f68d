/*
 * test_fsm.c — the restart / circuit-breaker machine, driven by a fake clock.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "supervisor/fsm.h"

#define MID 0x80000000u   /* rand32 that gives exactly the unjittered delay */

static struct tpo_fsm f;
static struct tpo_fsm_params p;
static uint64_t now;
static uint64_t dl;

static void setup(void)
{
	tpo_fsm_init(&f);
	tpo_fsm_params_default(&p);
	now = 1000000;
	dl = 12345;
}

static int step(int type, int code, int signo, uint32_t r)
{
	struct tpo_fsm_event ev = { .type = type, .code = code, .signo = signo };

	return tpo_fsm_step(&f, &p, &ev, now, r, &dl);
}

static int start(void)  { return step(TPO_EV_START, 0, 0, MID); }
static int crash(void)  { return step(TPO_EV_EXIT, 1, 0, MID); }
static int timer(void)  { return step(TPO_EV_TIMER, 0, 0, MID); }

/* Advances the fake clock to the pending deadline and fires it. */
static int fire(void)
{
	cr_assert_neq(dl, 0, "no deadline to fire");
	now = dl;
	return timer();
}

/* From RUNNING: crash after ran ms, then wait out the backoff and respawn. */
static void crash_and_respawn(uint64_t ran)
{
	now += ran;
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_BACKOFF);
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
}

/* From RUNNING with default params: five quick crashes, the sixth opens. */
static void open_circuit(void)
{
	for (int i = 0; i < 5; i++)
		crash_and_respawn(10);
	now += 10;
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_OPEN);
}

Test(fsm, init_is_stopped, .init = setup)
{
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
	cr_assert_eq(timer(), TPO_ACT_NONE);
	cr_assert_eq(dl, 0);
	cr_assert_eq(step(TPO_EV_EXIT, 1, 0, MID), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
}

Test(fsm, first_start_spawns_and_arms_stable_timer, .init = setup)
{
	cr_assert_eq(start(), TPO_ACT_SPAWN);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(dl, now + 60000);
	cr_assert_eq(f.started_at, now);
	cr_assert_eq(f.restarts, 0);
	cr_assert_eq(start(), TPO_ACT_NONE, "START while running is a no-op");
}

Test(fsm, backoff_doubles_up_to_cap, .init = setup)
{
	static const uint64_t want[] = {
		100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000,
	};

	p.jitter_pct = 0;
	p.max_restarts = 63;
	p.window_ms = 1;
	start();
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		now += 50;
		cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
		cr_assert_eq(f.state, TPO_FSM_BACKOFF);
		cr_assert_eq(f.n, i + 1);
		cr_assert_eq(dl, now + want[i], "restart %zu: delay %llu, want %llu", i + 1,
			     (unsigned long long)(dl - now), (unsigned long long)want[i]);
		now = dl - 1;
		cr_assert_eq(timer(), TPO_ACT_NONE, "early timer must be ignored");
		cr_assert_eq(f.state, TPO_FSM_BACKOFF);
		cr_assert_eq(fire(), TPO_ACT_SPAWN);
		cr_assert_eq(f.state, TPO_FSM_RUNNING);
		cr_assert_eq(f.restarts, i + 1);
	}
}

Test(fsm, jitter_bounds, .init = setup)
{
	cr_assert_eq(tpo_fsm_delay_ms(&p, 1, 0), 80);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 1, 0xffffffffu), 120);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 1, MID), 100);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 9, 0), 20480);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 9, 0xffffffffu), 30720);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 40, 0), 24000);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 40, 0xffffffffu), 36000);
	cr_assert_eq(tpo_fsm_delay_ms(&p, 0xffffffffu, 0xffffffffu), 36000);
	for (uint32_t r = 1; r < 0xfff00000u; r += 0x0ffff001u) {
		uint64_t d = tpo_fsm_delay_ms(&p, 3, r);
		cr_assert(d >= 320 && d <= 480, "rand %u gave %llu", r, (unsigned long long)d);
	}

	start();
	now += 10;
	step(TPO_EV_EXIT, 1, 0, 0);
	cr_assert_eq(dl, now + 80);
}

Test(fsm, stable_timer_resets_n, .init = setup)
{
	start();
	crash_and_respawn(10);
	crash_and_respawn(10);
	crash_and_respawn(10);
	cr_assert_eq(f.n, 3);
	cr_assert_eq(dl, f.started_at + 60000);
	cr_assert_eq(fire(), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.n, 0);
	cr_assert_eq(dl, 0, "no timer once stable");
	now += 5;
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.n, 1);
	cr_assert_eq(dl, now + 100);
}

Test(fsm, long_run_exit_resets_n_without_timer, .init = setup)
{
	start();
	crash_and_respawn(10);
	crash_and_respawn(10);
	now += 60000;   /* the stable TIMER has not been delivered yet */
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.n, 1);
	cr_assert_eq(dl, now + 100);
}

Test(fsm, sixth_restart_in_window_opens_circuit, .init = setup)
{
	start();
	open_circuit();
	cr_assert_eq(f.k, 1);
	cr_assert_eq(dl, now + 30000);
	cr_assert_eq(f.restarts, 5);
}

Test(fsm, restarts_spread_beyond_window_do_not_open, .init = setup)
{
	start();
	for (int i = 0; i < 10; i++)
		crash_and_respawn(15000);   /* > 60 s between any six crashes */
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.k, 0);
}

Test(fsm, open_then_half_open_probe, .init = setup)
{
	start();
	open_circuit();
	uint64_t opened = now;
	now = dl - 1;
	cr_assert_eq(timer(), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_OPEN);
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	cr_assert_eq(now, opened + 30000);
	cr_assert_eq(f.state, TPO_FSM_HALF_OPEN);
	cr_assert_eq(dl, now + 10000, "probe_ok defaults to min(stable, 10 s)");
}

Test(fsm, probe_fails_reopens_longer_capped, .init = setup)
{
	static const uint64_t want[] = {
		60000, 90000, 120000, 150000, 180000, 210000, 240000, 270000, 300000, 300000,
	};

	start();
	open_circuit();
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		cr_assert_eq(fire(), TPO_ACT_SPAWN);
		cr_assert_eq(f.state, TPO_FSM_HALF_OPEN);
		now += 9999;
		cr_assert_eq(step(TPO_EV_EXIT, 0, SIGSEGV, MID), TPO_ACT_ARM_TIMER);
		cr_assert_eq(f.state, TPO_FSM_OPEN);
		cr_assert_eq(f.k, i + 2);
		cr_assert_eq(dl, now + want[i], "opening %zu", i + 2);
	}
}

Test(fsm, probe_succeeds_then_stable_resets_k, .init = setup)
{
	start();
	open_circuit();
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	uint64_t probe_start = now;
	cr_assert_eq(fire(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(now, probe_start + 10000);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.n, 0);
	cr_assert_eq(f.k, 1, "k survives until a full stable run");
	cr_assert_eq(dl, probe_start + 60000);
	cr_assert_eq(fire(), TPO_ACT_NONE);
	cr_assert_eq(f.k, 0);
	cr_assert_eq(dl, 0);
	/* The next open interval starts from 30 s again. */
	open_circuit();
	cr_assert_eq(f.k, 1);
	cr_assert_eq(dl, now + 30000);
}

Test(fsm, probe_exit_after_probe_ok_is_a_plain_crash, .init = setup)
{
	start();
	open_circuit();
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	now += 20000;   /* past probe_ok, its TIMER not delivered */
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_BACKOFF);
	cr_assert_eq(f.n, 1);
	cr_assert_eq(f.k, 1);
	cr_assert_eq(dl, now + 100);
}

Test(fsm, probe_then_fast_crash_loop_reopens_with_k2, .init = setup)
{
	start();
	open_circuit();
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	cr_assert_eq(fire(), TPO_ACT_ARM_TIMER);   /* probe ok */
	open_circuit();
	cr_assert_eq(f.k, 2);
	cr_assert_eq(dl, now + 60000);
}

Test(fsm, exit_78_fails_until_reset, .init = setup)
{
	start();
	crash_and_respawn(10);
	now += 10;
	cr_assert_eq(step(TPO_EV_EXIT, TPO_FSM_EX_CONFIG, 0, MID), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_FAILED);
	cr_assert_eq(f.last_code, 78);
	cr_assert_eq(dl, 0, "no timer while failed");
	now += 1000000;
	cr_assert_eq(timer(), TPO_ACT_NONE);
	cr_assert_eq(start(), TPO_ACT_NONE);
	cr_assert_eq(step(TPO_EV_EXIT, 1, 0, MID), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_FAILED);
	cr_assert_eq(dl, 0);
	cr_assert_eq(step(TPO_EV_RESET, 0, 0, MID), TPO_ACT_SPAWN);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.n, 0);
	cr_assert_eq(dl, now + 60000);
}

Test(fsm, exit_78_from_probe_fails, .init = setup)
{
	start();
	open_circuit();
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	now += 5;
	cr_assert_eq(step(TPO_EV_EXIT, 78, 0, MID), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_FAILED);
	cr_assert_eq(dl, 0);
}

Test(fsm, signal_counts_as_crash, .init = setup)
{
	start();
	now += 10;
	cr_assert_eq(step(TPO_EV_EXIT, 78, SIGKILL, MID), TPO_ACT_ARM_TIMER,
		     "a signal death is a crash whatever the code field holds");
	cr_assert_eq(f.state, TPO_FSM_BACKOFF);
	cr_assert_eq(f.n, 1);
	cr_assert_eq(f.last_code, -SIGKILL);
}

Test(fsm, exit_zero_outside_shutdown_restarts, .init = setup)
{
	start();
	now += 10;
	cr_assert_eq(step(TPO_EV_EXIT, 0, 0, MID), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_BACKOFF);
}

Test(fsm, shutdown_in_backoff_cancels_restart, .init = setup)
{
	start();
	now += 10;
	crash();
	uint64_t old = dl;
	cr_assert_eq(step(TPO_EV_SHUTDOWN, 0, 0, MID), TPO_ACT_STOPPED);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
	cr_assert_eq(dl, 0);
	now = old;
	cr_assert_eq(timer(), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
}

Test(fsm, shutdown_in_open_cancels_probe, .init = setup)
{
	start();
	open_circuit();
	uint64_t old = dl;
	cr_assert_eq(step(TPO_EV_SHUTDOWN, 0, 0, MID), TPO_ACT_STOPPED);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
	cr_assert_eq(dl, 0);
	now = old;
	cr_assert_eq(timer(), TPO_ACT_NONE);
	cr_assert_eq(step(TPO_EV_RESET, 0, 0, MID), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
}

Test(fsm, shutdown_in_failed_stops, .init = setup)
{
	start();
	step(TPO_EV_EXIT, 78, 0, MID);
	cr_assert_eq(step(TPO_EV_SHUTDOWN, 0, 0, MID), TPO_ACT_STOPPED);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
}

Test(fsm, shutdown_running_kills_then_exit_stops, .init = setup)
{
	start();
	now += 10;
	cr_assert_eq(step(TPO_EV_SHUTDOWN, 0, 0, MID), TPO_ACT_KILL);
	cr_assert_eq(f.state, TPO_FSM_STOPPING);
	cr_assert_eq(dl, 0);
	cr_assert_eq(step(TPO_EV_SHUTDOWN, 0, 0, MID), TPO_ACT_NONE);
	now += 60000;
	cr_assert_eq(timer(), TPO_ACT_NONE);
	cr_assert_eq(step(TPO_EV_RESET, 0, 0, MID), TPO_ACT_NONE);
	cr_assert_eq(f.state, TPO_FSM_STOPPING);
	cr_assert_eq(step(TPO_EV_EXIT, 0, SIGTERM, MID), TPO_ACT_STOPPED);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
	cr_assert_eq(dl, 0);
	cr_assert_eq(f.n, 0, "an exit during shutdown is not a failure");
	/* A later START runs it again; that is not a restart. */
	cr_assert_eq(start(), TPO_ACT_SPAWN);
	cr_assert_eq(f.restarts, 0);
}

Test(fsm, shutdown_half_open_kills, .init = setup)
{
	start();
	open_circuit();
	fire();
	cr_assert_eq(f.state, TPO_FSM_HALF_OPEN);
	cr_assert_eq(step(TPO_EV_SHUTDOWN, 0, 0, MID), TPO_ACT_KILL);
	cr_assert_eq(f.state, TPO_FSM_STOPPING);
	cr_assert_eq(step(TPO_EV_EXIT, 1, 0, MID), TPO_ACT_STOPPED);
	cr_assert_eq(f.state, TPO_FSM_STOPPED);
}

Test(fsm, reset_in_open_restarts_now, .init = setup)
{
	start();
	open_circuit();
	cr_assert_eq(step(TPO_EV_RESET, 0, 0, MID), TPO_ACT_SPAWN);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.k, 0);
	cr_assert_eq(f.n, 0);
	/* The history is gone: five more quick crashes are allowed. */
	for (int i = 0; i < 5; i++)
		crash_and_respawn(10);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
}

Test(fsm, reset_in_half_open_closes_circuit, .init = setup)
{
	start();
	open_circuit();
	fire();
	cr_assert_eq(step(TPO_EV_RESET, 0, 0, MID), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.k, 0);
	cr_assert_eq(dl, f.started_at + 60000);
}

Test(fsm, max_restarts_clamped_to_ring, .init = setup)
{
	p.max_restarts = 1000;
	p.window_ms = 86400000;
	start();
	for (int i = 0; i < TPO_FSM_RESTARTS_MAX; i++)
		crash_and_respawn(10);
	now += 10;
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_OPEN, "the 64th restart in the window opens");
}

Test(fsm, history_ring_wraps, .init = setup)
{
	p.max_restarts = 3;
	p.window_ms = 1000;
	p.cap_ms = 100;
	p.jitter_pct = 0;
	start();
	/* 200 crashes, each > 1 s apart: never more than one in the window. */
	for (int i = 0; i < 200; i++)
		crash_and_respawn(1000);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	cr_assert_eq(f.hist_len, TPO_FSM_RING);
	/* With the 200th crash, four within a second: the fourth opens. */
	crash_and_respawn(1);
	crash_and_respawn(1);
	cr_assert_eq(f.state, TPO_FSM_RUNNING);
	now += 1;
	cr_assert_eq(crash(), TPO_ACT_ARM_TIMER);
	cr_assert_eq(f.state, TPO_FSM_OPEN);
}

Test(fsm, state_names)
{
	cr_assert_str_eq(tpo_fsm_state_name(0), "stopped");
	cr_assert_str_eq(tpo_fsm_state_name(1), "running");
	cr_assert_str_eq(tpo_fsm_state_name(2), "backoff");
	cr_assert_str_eq(tpo_fsm_state_name(3), "open");
	cr_assert_str_eq(tpo_fsm_state_name(4), "half-open");
	cr_assert_str_eq(tpo_fsm_state_name(5), "failed");
	cr_assert_str_eq(tpo_fsm_state_name(6), "stopping");
	cr_assert_str_eq(tpo_fsm_state_name(7), "unknown");
	cr_assert_str_eq(tpo_fsm_state_name(-1), "unknown");
	cr_assert_eq(TPO_FSM_HALF_OPEN, 4);
	cr_assert_eq(TPO_FSM_FAILED, 5);
}

Test(fsm, params_check)
{
	struct tpo_fsm_params q;
	char err[128];

	tpo_fsm_params_default(&q);
	cr_assert_eq(tpo_fsm_params_check(&q, err, sizeof(err)), 0);
	cr_assert_eq(tpo_fsm_open_ms(&q, 1), 30000);
	cr_assert_eq(tpo_fsm_open_ms(&q, 100), 300000);

	q.max_restarts = 64;
	cr_assert_eq(tpo_fsm_params_check(&q, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "max_restarts"), "%s", err);
	tpo_fsm_params_default(&q);
	q.jitter_pct = 101;
	cr_assert_eq(tpo_fsm_params_check(&q, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "jitter_pct"), "%s", err);
	tpo_fsm_params_default(&q);
	q.cap_ms = 50;
	cr_assert_eq(tpo_fsm_params_check(&q, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "cap_ms"), "%s", err);
	tpo_fsm_params_default(&q);
	q.probe_ok_ms = 70000;
	cr_assert_eq(tpo_fsm_params_check(&q, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "probe_ok_ms"), "%s", err);
	tpo_fsm_params_default(&q);
	q.open_max_ms = 1;
	cr_assert_eq(tpo_fsm_params_check(&q, NULL, 0), -EINVAL);
}

Test(fsm, explicit_probe_ok, .init = setup)
{
	p.probe_ok_ms = 2500;
	start();
	open_circuit();
	cr_assert_eq(fire(), TPO_ACT_SPAWN);
	cr_assert_eq(dl, now + 2500);
}
