/*
 * fsm.h — restart / circuit-breaker state machine of one unit (process slot).
 *
 * A pure function `state × event → action`: no syscalls, no clock reads, no
 * randomness of its own. The caller (the supervisor's epoll loop) feeds it
 * events with the current monotonic time in ms and a random 32-bit word, then
 * carries out the returned action and programs the unit's timer from
 * *deadline_ms. Tests drive it with a fake clock.
 *
 *   state              event                        -> state      action
 *   STOPPED            START                        -> RUNNING    SPAWN
 *   RUNNING            TIMER (ran stable_ms)        -> RUNNING    NONE      n = k = 0
 *   RUNNING            EXIT, <= R restarts/window   -> BACKOFF    ARM_TIMER n + 1
 *   RUNNING            EXIT, >  R restarts/window   -> OPEN       ARM_TIMER k + 1
 *   BACKOFF            TIMER                        -> RUNNING    SPAWN
 *   OPEN               TIMER                        -> HALF_OPEN  SPAWN     the probe
 *   HALF_OPEN          TIMER (ran probe_ok_ms)      -> RUNNING    ARM_TIMER n = 0
 *   HALF_OPEN          EXIT before probe_ok_ms      -> OPEN       ARM_TIMER k + 1
 *   RUNNING, HALF_OPEN EXIT 78 (EX_CONFIG)          -> FAILED     NONE
 *   BACKOFF, OPEN,     RESET                        -> RUNNING    SPAWN     n = k = 0
 *     FAILED
 *   RUNNING, HALF_OPEN RESET                        -> RUNNING    NONE or ARM_TIMER
 *   RUNNING, HALF_OPEN SHUTDOWN                     -> STOPPING   KILL
 *   STOPPING           EXIT                         -> STOPPED    STOPPED
 *   BACKOFF, OPEN,     SHUTDOWN                     -> STOPPED    STOPPED
 *     FAILED, STOPPED
 *
 * Counting rules:
 *  - n counts consecutive failures; the n-th restart waits
 *    min(base_ms·2^(n−1), cap_ms) ± jitter_pct%. A process that ran for at
 *    least stable_ms (RUNNING's TIMER, or an EXIT that comes later than that)
 *    resets n, and also k (the count of circuit openings).
 *  - A restart is counted at the exit that causes it. When that makes more
 *    than max_restarts restarts within the last window_ms, the circuit opens
 *    instead of restarting; the k-th opening lasts min(open_ms·k,
 *    open_max_ms). Opening clears the restart history.
 *  - After the open interval one probe is spawned (HALF_OPEN). If it runs for
 *    probe_ok_ms it is a success: RUNNING, n and the history cleared; k is
 *    cleared only once the process completes a full stable_ms run. If it
 *    exits earlier the circuit reopens with k + 1. An EXIT that arrives
 *    after probe_ok_ms but before its TIMER counts as success then crash.
 *  - probe_ok_ms is a parameter because the full stable_ms (60 s) would keep
 *    a lane routed around for a minute after a good probe; 0 picks
 *    min(stable_ms, 10 s).
 *  - Exit status 78 (EX_CONFIG) means the unit cannot work as configured:
 *    FAILED, no timer, no restart until RESET. A death by signal is a crash
 *    like any other exit status, and so is exit 0 outside shutdown.
 *
 * Thread/process: one struct tpo_fsm per unit, owned and stepped only by the
 * supervisor's loop. State values match shm/stats.h enum tpo_unit_state
 * (0–5) so they can be cast; STOPPING (6) is internal and shows as "stopping".
 */
#ifndef TPO_FSM_H
#define TPO_FSM_H

#include <stddef.h>
#include <stdint.h>

/* Restart-time history kept per unit; max_restarts is clamped to RING − 1. */
#define TPO_FSM_RING          64
#define TPO_FSM_RESTARTS_MAX  (TPO_FSM_RING - 1)
/* Upper bound on cap_ms (one day): keeps the jitter arithmetic in 64 bits. */
#define TPO_FSM_CAP_MAX_MS    86400000u
#define TPO_FSM_EX_CONFIG     78

enum tpo_fsm_state {
	TPO_FSM_STOPPED   = 0,
	TPO_FSM_RUNNING   = 1,
	TPO_FSM_BACKOFF   = 2,
	TPO_FSM_OPEN      = 3,
	TPO_FSM_HALF_OPEN = 4,
	TPO_FSM_FAILED    = 5,
	TPO_FSM_STOPPING  = 6,
};

enum tpo_fsm_ev {
	TPO_EV_START    = 1,  /* the unit should run (first start, or again after STOPPED) */
	TPO_EV_EXIT     = 2,  /* the unit's process ended; see code / signo */
	TPO_EV_TIMER    = 3,  /* the unit's deadline passed (early/stale ones are ignored) */
	TPO_EV_SHUTDOWN = 4,  /* stop for good: no more restarts */
	TPO_EV_RESET    = 5,  /* operator: forget the failure history, run now */
};

struct tpo_fsm_event {
	int type;    /* enum tpo_fsm_ev */
	int code;    /* EXIT: exit status when signo == 0 */
	int signo;   /* EXIT: > 0 when the process was killed by this signal */
};

/*
 * What the caller must do to the process. Independently of the action, the
 * caller (re)programs the unit's timer from *deadline_ms after EVERY step:
 * 0 means no timer, anything else an absolute time on the caller's clock.
 */
enum tpo_fsm_action {
	TPO_ACT_NONE      = 0, /* nothing to do to the process */
	TPO_ACT_SPAWN     = 1, /* start the process now */
	TPO_ACT_ARM_TIMER = 2, /* nothing to do but wait: a new deadline is set (BACKOFF, OPEN,
				  a probe that turned RUNNING) */
	TPO_ACT_KILL      = 3, /* ask the running process to stop (SIGTERM); an EXIT follows */
	TPO_ACT_STOPPED   = 4, /* the unit is STOPPED with no process: its shutdown is complete */
};

/*
 * Parameters, all times in ms. tpo_fsm_params_default() gives the defaults
 * in brackets; tpo_fsm_params_check() enforces the ranges, and
 * tpo_fsm_step() clamps out-of-range values rather than misbehave.
 */
struct tpo_fsm_params {
	uint32_t base_ms;       /* [100]    first restart delay, >= 1 */
	uint32_t cap_ms;        /* [30000]  largest delay, base_ms..TPO_FSM_CAP_MAX_MS */
	uint32_t jitter_pct;    /* [20]     ± percent of the delay, 0..100 */
	uint32_t stable_ms;     /* [60000]  a run this long resets n and k, >= 1 */
	uint32_t max_restarts;  /* [5]      restarts allowed per window, 0..63 */
	uint32_t window_ms;     /* [60000]  >= 1 */
	uint32_t open_ms;       /* [30000]  open interval unit: k-th opening lasts open_ms·k */
	uint32_t open_max_ms;   /* [300000] longest open interval, >= open_ms */
	uint32_t probe_ok_ms;   /* [0]      probe success after this long; 0 means
				   min(stable_ms, 10000); at most stable_ms */
};

struct tpo_fsm {
	int      state;         /* enum tpo_fsm_state */
	uint32_t n;             /* consecutive failures since the last stable run */
	uint32_t k;             /* circuit openings since the last stable run */
	uint32_t restarts;      /* spawns other than START: for the stats segment */
	uint64_t started_at;    /* spawn time of the current/last process */
	uint64_t deadline;      /* pending timer, 0 = none */
	uint32_t hist_head;     /* next slot to write in hist */
	uint32_t hist_len;      /* valid entries, <= TPO_FSM_RING */
	uint64_t hist[TPO_FSM_RING]; /* times of recent restarts */
	int      last_code;     /* last EXIT: status, or −signo if killed */
};

void tpo_fsm_params_default(struct tpo_fsm_params *p);

/* 0, or -EINVAL with a message naming the field written to err. */
int tpo_fsm_params_check(const struct tpo_fsm_params *p, char *err, size_t errlen);

/* A unit that has never run: STOPPED, no history, no deadline. */
void tpo_fsm_init(struct tpo_fsm *f);

/*
 * Feeds one event at time now_ms (monotonic, never decreasing between calls)
 * with rand32 a uniformly random word used only for the backoff jitter.
 * Writes the unit's pending deadline to *deadline_ms (0 = none) and returns
 * the action to carry out. Events that make no sense in the current state
 * (EXIT with no process, START while active, a TIMER before the deadline)
 * change nothing and return TPO_ACT_NONE.
 */
enum tpo_fsm_action tpo_fsm_step(struct tpo_fsm *f, const struct tpo_fsm_params *p,
				 const struct tpo_fsm_event *ev, uint64_t now_ms,
				 uint32_t rand32, uint64_t *deadline_ms);

/*
 * The delay before the n-th consecutive restart (n >= 1):
 * min(base·2^(n−1), cap) scaled linearly from −jitter% (rand32 = 0) to
 * +jitter% (rand32 = 0xffffffff).
 */
uint64_t tpo_fsm_delay_ms(const struct tpo_fsm_params *p, uint32_t n, uint32_t rand32);

/* The length of the k-th open interval (k >= 1): min(open_ms·k, open_max_ms). */
uint64_t tpo_fsm_open_ms(const struct tpo_fsm_params *p, uint32_t k);

/* "stopped", "running", "backoff", "open", "half-open", "failed",
 * "stopping"; "unknown" for anything else. Never NULL. */
const char *tpo_fsm_state_name(int state);

#endif
