/*
 * sup.c — the supervisor's instance: create segments and doorbells, fork one
 * pinned process per stage per lane, restart them through their state
 * machines (fsm.c), drain and clean up on SIGTERM.
 *
 * Everything runs on one thread around one epoll loop:
 *   signalfd   TERM/INT: drain and stop; HUP: reload; CHLD: reap orphans
 *              (we are a child subreaper, so grandchildren end up here)
 *   pidfd      one per live child; readable when it exits
 *   timerfd    50 ms tick: unit deadlines, drain phases, watchdog, hung
 *              stage detection
 */
#include "supervisor/sup.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "shm/ringset.h"
#include "shm/stats.h"
#include "supervisor/fsm.h"
#include "supervisor/topology.h"

/* The stats segment's unit states and stage numbers are fsm.h's and
 * config.h's (sup.c casts between them); shm/ does not see supervisor/. */
#define SAME(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME(TPO_UNIT_STOPPED, TPO_FSM_STOPPED) &&
	       SAME(TPO_UNIT_RUNNING, TPO_FSM_RUNNING) &&
	       SAME(TPO_UNIT_BACKOFF, TPO_FSM_BACKOFF) &&
	       SAME(TPO_UNIT_OPEN, TPO_FSM_OPEN) &&
	       SAME(TPO_UNIT_HALF_OPEN, TPO_FSM_HALF_OPEN) &&
	       SAME(TPO_UNIT_FAILED, TPO_FSM_FAILED) &&
	       SAME(TPO_UNIT_STOPPING, TPO_FSM_STOPPING), "unit states = fsm states");
_Static_assert(SAME(TPO_STAGE_STREAM, TPO_ST_STREAM) && SAME(TPO_STAGE_RAG, TPO_ST_RAG) &&
	       SAME(TPO_STAGE_ASSEMBLE, TPO_ST_ASSEMBLE) &&
	       SAME(TPO_STAGE_INFER, TPO_ST_INFER) && SAME(TPO_STAGE_POST, TPO_ST_POST),
	       "stats stages = ringset stages");
#undef SAME

#define TICK_MS          50
#define BELL_BASE        200     /* doorbell fds live at BELL_BASE.. in every child */
#define STOP_GRACE_MS    3000    /* per stage, after SIGTERM, before SIGKILL */
#define HUNG_AFTER_NS    (15ull * 1000000000ull)

enum { TAG_SIG = 1, TAG_TIMER, TAG_UNIT };

struct unit {
	int tag;                  /* TAG_UNIT: first, epoll data points here */
	int stage, lane, cpu;
	pid_t pid;
	int pidfd;
	struct tpo_fsm fsm;
	uint64_t kill_at_ms;      /* SIGKILL if still alive then (0: none) */
	uint64_t spawned_ms;
	int last_status, last_code, last_signal;
	int off;                  /* the configuration runs no process here */
	int pub_state;            /* state last published, for state_since */
	uint64_t since_ns;
};

struct sup {
	const struct tpo_config *cfg;
	const char *config_path;
	const char *name;
	int nlanes;
	int cpus[TPO_LANES_MAX];
	struct unit units[TPO_ST_COUNT][TPO_LANES_MAX];
	struct tpo_ringset rs;
	struct tpo_stats stats;
	struct tpo_fsm_params fp;
	int epfd, sigfd, tfd;
	int sig_tag, timer_tag;
	int draining;             /* 0 running; else the stage now being stopped + 1 */
	uint64_t phase_deadline_ms;
	uint64_t watchdog_usec;
	uint64_t last_watchdog_ms, last_status_ms, last_req_in;
	int ready_sent;
	uint64_t rng;
	char bindir[PATH_MAX];
	pid_t self;
};

static void logmsg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logmsg(int prio, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n = snprintf(buf, sizeof(buf), "<%d>tpo-supervisor: ", prio);

	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	n = (int)strlen(buf);
	buf[n++] = '\n';
	if (write(2, buf, (size_t)n) < 0)
		return;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t rand32(struct sup *s)
{
	/* xorshift64*: jitter only, no need for more. */
	s->rng ^= s->rng >> 12;
	s->rng ^= s->rng << 25;
	s->rng ^= s->rng >> 27;
	return (uint32_t)((s->rng * 0x2545F4914F6CDD1Dull) >> 32);
}

static int pidfd_open(pid_t pid)
{
	long fd = syscall(SYS_pidfd_open, pid, 0);

	return fd < 0 ? -errno : (int)fd;
}

static int epoll_add(int epfd, int fd, void *tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = tag };

	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void pub_unit(struct sup *s, struct unit *u)
{
	struct tpo_stats_sup_info v = {
		.pid = u->pid,
		.state = (uint32_t)u->fsm.state,
		.restarts = u->fsm.restarts,
		.last_status = u->last_status,
		.last_exit_code = u->last_code,
		.last_signal = u->last_signal,
		.state_since_ns = u->since_ns,
	};

	if (u->fsm.state != u->pub_state) {
		u->pub_state = u->fsm.state;
		u->since_ns = v.state_since_ns = tpo_now_ns();
	}
	tpo_stats_sup_set(&s->stats, u->stage, u->lane, &v);
}

static int find_bindir(char *dir, size_t cap)
{
	ssize_t n = readlink("/proc/self/exe", dir, cap - 1);
	char *slash;

	if (n < 0)
		return -errno;
	dir[n] = 0;
	slash = strrchr(dir, '/');
	if (!slash)
		return -ENOENT;
	*slash = 0;
	return 0;
}

/* In the child, between fork and exec: only async-signal-safe calls and
 * hwloc (the child is single-threaded). */
static void child_exec(struct sup *s, struct unit *u)
{
	char path[PATH_MAX + 32], lane[16], lanes[16], base[16];
	char *argv[] = { path, "--instance", (char *)s->name, "--lane", lane,
			 "--lanes", lanes, "--bell-base", base, NULL };
	sigset_t none;
	int err;

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Our own process group: a terminal's Ctrl-C reaches the supervisor
	 * only, which then drains the stages in order. */
	setpgid(0, 0);
	/* If the supervisor dies, so do we; re-check in case it died already. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != s->self)
		_exit(TPO_EX_SYSTEM);
	/* Only the supervisor talks to systemd. */
	unsetenv("NOTIFY_SOCKET");
	err = tpo_topology_pin(u->cpu);
	if (err < 0)
		logmsg(LOG_WARNING, "%s[%d]: unable to pin to cpu %d: %s",
		       tpo_stage_name(u->stage), u->lane, u->cpu, strerror(-err));
	/* A stage's work per wake-up is one short batch, after which it sleeps
	 * again: with SCHED_BATCH the stage it wakes runs then, instead of
	 * preempting it and costing two more context switches per hop. */
	{
		struct sched_param sp = { .sched_priority = 0 };
		int want = s->cfg->sched == TPO_SCHED_BATCH ? SCHED_BATCH : SCHED_OTHER;
		int have = sched_getscheduler(0);
		/* "normal" means SCHED_OTHER even under a supervisor started
		 * with another policy (chrt, systemd CPUSchedulingPolicy=);
		 * real-time policies set by the administrator are kept. */
		if (have != want && (have == SCHED_OTHER || have == SCHED_BATCH ||
				     have == SCHED_IDLE) &&
		    sched_setscheduler(0, want, &sp) < 0)
			logmsg(LOG_WARNING, "%s[%d]: unable to set scheduling policy %s: %s",
			       tpo_stage_name(u->stage), u->lane,
			       want == SCHED_BATCH ? "SCHED_BATCH" : "SCHED_OTHER", strerror(errno));
	}
	snprintf(path, sizeof(path), "%s/tpo-%s", s->bindir, tpo_stage_name(u->stage));
	snprintf(lane, sizeof(lane), "%d", u->lane);
	snprintf(lanes, sizeof(lanes), "%d", s->nlanes);
	snprintf(base, sizeof(base), "%d", BELL_BASE);
	execv(path, argv);
	logmsg(LOG_ERR, "fatal: unable to exec %s: %s", path, strerror(errno));
	_exit(TPO_EX_SYSTEM);
}

static int spawn(struct sup *s, struct unit *u)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		return -errno;
	if (pid == 0)
		child_exec(s, u);
	fd = pidfd_open(pid);
	if (fd < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		return fd;
	}
	u->pid = pid;
	u->pidfd = fd;
	u->spawned_ms = now_ms();
	u->kill_at_ms = 0;
	return epoll_add(s->epfd, fd, u);
}

/* Carries out what the unit's state machine decided. */
static void step(struct sup *s, struct unit *u, int type, int code, int signo)
{
	struct tpo_fsm_event ev = { .type = type, .code = code, .signo = signo };
	uint64_t deadline, t = now_ms();
	enum tpo_fsm_action act;
	int err;

	if (u->off)
		return;
	act = tpo_fsm_step(&u->fsm, &s->fp, &ev, t, rand32(s), &deadline);
	switch (act) {
	case TPO_ACT_SPAWN:
		err = spawn(s, u);
		if (err < 0) {
			logmsg(LOG_ERR, "%s[%d]: unable to start: %s",
			       tpo_stage_name(u->stage), u->lane, strerror(-err));
			/* Treat as an immediate crash: backoff and circuit apply. */
			pub_unit(s, u);
			step(s, u, TPO_EV_EXIT, TPO_EX_SYSTEM, 0);
			return;
		}
		if (u->fsm.restarts)
			logmsg(LOG_NOTICE, "%s[%d]: started pid %d (%s, restart %u)",
			       tpo_stage_name(u->stage), u->lane, (int)u->pid,
			       tpo_fsm_state_name(u->fsm.state), u->fsm.restarts);
		break;
	case TPO_ACT_KILL:
		if (u->pid > 0) {
			kill(u->pid, SIGTERM);
			u->kill_at_ms = t + STOP_GRACE_MS;
		}
		break;
	case TPO_ACT_ARM_TIMER:
		if (u->fsm.state == TPO_FSM_OPEN)
			logmsg(LOG_WARNING, "%s[%d]: circuit open: too many restarts, next try in %llu ms",
			       tpo_stage_name(u->stage), u->lane,
			       (unsigned long long)(deadline - t));
		else if (u->fsm.state == TPO_FSM_BACKOFF)
			logmsg(LOG_NOTICE, "%s[%d]: restarting in %llu ms",
			       tpo_stage_name(u->stage), u->lane,
			       (unsigned long long)(deadline - t));
		break;
	case TPO_ACT_NONE:
	case TPO_ACT_STOPPED:
		break;
	}
	if (u->fsm.state == TPO_FSM_FAILED && type == TPO_EV_EXIT)
		logmsg(LOG_ERR, "%s[%d]: failed with exit status 78 (configuration): "
		       "not restarting until the operator acts",
		       tpo_stage_name(u->stage), u->lane);
	pub_unit(s, u);
}

static void on_exit_status(struct sup *s, struct unit *u, const siginfo_t *si)
{
	int code = 0, signo = 0;

	if (si->si_code == CLD_EXITED)
		code = si->si_status;
	else
		signo = si->si_status;
	u->last_status = si->si_code == CLD_EXITED ? (code << 8) : signo;
	u->last_code = si->si_code == CLD_EXITED ? code : -1;
	u->last_signal = signo;
	epoll_ctl(s->epfd, EPOLL_CTL_DEL, u->pidfd, NULL);
	close(u->pidfd);
	u->pidfd = -1;
	u->pid = 0;
	if (!s->draining || u->fsm.state != TPO_FSM_STOPPING) {
		if (signo)
			logmsg(LOG_WARNING, "%s[%d]: killed by signal %d (%s)",
			       tpo_stage_name(u->stage), u->lane, signo, strsignal(signo));
		else
			logmsg(LOG_WARNING, "%s[%d]: exited with status %d",
			       tpo_stage_name(u->stage), u->lane, code);
	}
	step(s, u, TPO_EV_EXIT, code, signo);
}

static void on_pidfd(struct sup *s, struct unit *u)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (u->pidfd < 0)
		return;
	if (waitid(P_PIDFD, (id_t)u->pidfd, &si, WEXITED | WNOHANG) < 0 || si.si_pid == 0)
		return;
	on_exit_status(s, u, &si);
}

static struct unit *unit_of_pid(struct sup *s, pid_t pid)
{
	for (int st = 0; st < TPO_ST_COUNT; st++)
		for (int l = 0; l < s->nlanes; l++)
			if (s->units[st][l].pid == pid)
				return &s->units[st][l];
	return NULL;
}

/* Reaps orphans re-parented to us (we are a subreaper); our own children
 * are reaped through their pidfds. */
static void reap_orphans(struct sup *s)
{
	for (;;) {
		siginfo_t si;

		memset(&si, 0, sizeof(si));
		if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0)
			return;
		if (unit_of_pid(s, si.si_pid)) {
			struct unit *u = unit_of_pid(s, si.si_pid);
			on_pidfd(s, u);
			continue;
		}
		waitpid(si.si_pid, NULL, 0);
	}
}

static int all_stopped(struct sup *s, int stage)
{
	for (int l = 0; l < s->nlanes; l++)
		if (s->units[stage][l].pid > 0)
			return 0;
	return 1;
}

/*
 * Drain, upstream first: stream processes stop accepting and finish their
 * in-flight requests (they read drain_timeout_ms themselves); once they are
 * gone, each later stage gets SIGTERM in turn, SIGKILL after STOP_GRACE_MS.
 */
static void drain_stage(struct sup *s, int stage)
{
	uint64_t grace = stage == TPO_ST_STREAM ?
		(uint64_t)s->cfg->drain_timeout_ms + STOP_GRACE_MS : STOP_GRACE_MS;

	s->draining = stage + 1;
	s->phase_deadline_ms = now_ms() + grace;
	for (int l = 0; l < s->nlanes; l++) {
		struct unit *u = &s->units[stage][l];
		step(s, u, TPO_EV_SHUTDOWN, 0, 0);
		if (u->kill_at_ms)
			u->kill_at_ms = s->phase_deadline_ms;
	}
}

static void begin_drain(struct sup *s, const char *why)
{
	if (s->draining)
		return;
	logmsg(LOG_NOTICE, "%s: draining (timeout %u ms)", why, s->cfg->drain_timeout_ms);
	sd_notify(0, "STOPPING=1\nSTATUS=draining");
	tpo_stats_set_draining(&s->stats, 1);
	/* Only the fronts stop now. A later stage's unit waiting to restart
	 * still restarts: the requests in flight in its lane need it to finish
	 * (its turn to stop comes after the stages before it, drain_stage). */
	drain_stage(s, TPO_ST_STREAM);
}

/* Returns 1 when the whole instance has stopped. */
static int drain_progress(struct sup *s)
{
	int stage = s->draining - 1;

	if (!all_stopped(s, stage))
		return 0;
	if (stage + 1 >= TPO_ST_COUNT)
		return 1;
	drain_stage(s, stage + 1);
	return drain_progress(s);
}

/* A unit is ready once its current process has claimed its stats slot. */
static int unit_ready(struct sup *s, struct unit *u)
{
	struct tpo_proc_snapshot p;

	if (u->off)
		return 1;
	return u->pid > 0 && u->fsm.state == TPO_FSM_RUNNING &&
	       tpo_stats_read_proc(&s->stats, u->stage, u->lane, &p) == 0 &&
	       p.child_pid == u->pid;
}

/* READY=1 once every stage has a ready process; STATUS= each second. */
static void notify_status(struct sup *s, uint64_t t)
{
	int lanes_ready = 0, open = 0, all = 1;
	uint64_t in = 0;

	if (s->draining || (s->ready_sent && t - s->last_status_ms < 1000))
		return;
	for (int l = 0; l < s->nlanes; l++) {
		int lane_ok = 1;
		for (int st = 0; st < TPO_ST_COUNT; st++) {
			struct unit *u = &s->units[st][l];
			if (!unit_ready(s, u))
				lane_ok = 0;
			if (u->fsm.state == TPO_FSM_OPEN || u->fsm.state == TPO_FSM_HALF_OPEN)
				open++;
		}
		lanes_ready += lane_ok;
		all &= lane_ok;
	}
	for (int st = 0; st < TPO_ST_COUNT; st++) {
		int ok = 0;
		for (int l = 0; l < s->nlanes; l++)
			ok |= unit_ready(s, &s->units[st][l]);
		if (!ok)
			all = 0;
	}
	for (int l = 0; l < s->nlanes; l++) {
		struct tpo_proc_snapshot p;
		if (tpo_stats_read_proc(&s->stats, TPO_ST_STREAM, l, &p) == 0)
			in += p.req_in;
	}
	if (!s->ready_sent && !all)
		return;
	sd_notifyf(0, "%sSTATUS=%d/%d lanes ready, %d circuits open, %llu req/s",
		   s->ready_sent ? "" : "READY=1\n", lanes_ready, s->nlanes, open,
		   (unsigned long long)(s->last_status_ms && t > s->last_status_ms ?
			(in - s->last_req_in) * 1000 / (t - s->last_status_ms) : 0));
	if (!s->ready_sent)
		logmsg(LOG_NOTICE, "ready: every stage has a running process");
	s->ready_sent = 1;
	s->last_status_ms = t;
	s->last_req_in = in;
}

static void on_tick(struct sup *s)
{
	uint64_t t = now_ms();
	uint64_t tns = tpo_now_ns();

	for (int st = 0; st < TPO_ST_COUNT; st++) {
		for (int l = 0; l < s->nlanes; l++) {
			struct unit *u = &s->units[st][l];
			if (u->fsm.deadline && t >= u->fsm.deadline)
				step(s, u, TPO_EV_TIMER, 0, 0);
			if (u->pid > 0 && u->kill_at_ms && t >= u->kill_at_ms) {
				logmsg(LOG_WARNING, "%s[%d]: did not stop in time: SIGKILL",
				       tpo_stage_name(st), l);
				kill(u->pid, SIGKILL);
				u->kill_at_ms = 0;
			}
			/* A stage whose heartbeat stopped is hung: kill it so its
			 * state machine restarts it. */
			if (u->pid > 0 && !u->kill_at_ms && !s->draining) {
				uint64_t hb = tpo_stats_heartbeat_of(&s->stats, st, l);
				if (hb && tns > hb + HUNG_AFTER_NS &&
				    t > u->spawned_ms + HUNG_AFTER_NS / 1000000) {
					logmsg(LOG_ERR, "%s[%d]: no heartbeat for %llu s: SIGKILL",
					       tpo_stage_name(st), l,
					       (unsigned long long)((tns - hb) / 1000000000ull));
					kill(u->pid, SIGKILL);
					u->kill_at_ms = t + STOP_GRACE_MS;
				}
			}
		}
	}
	tpo_stats_heartbeat(&s->stats, TPO_STATS_SUPERVISOR, 0, tns);
	if (s->watchdog_usec && (t - s->last_watchdog_ms) * 2000 >= s->watchdog_usec) {
		s->last_watchdog_ms = t;
		sd_notify(0, "WATCHDOG=1");
	}
	notify_status(s, t);
}

/* `tpo-supervisor reset`: the operator fixed what failed units need. */
static void operator_reset(struct sup *s)
{
	int n = 0;

	if (s->draining)
		return;
	for (int st = 0; st < TPO_ST_COUNT; st++)
		for (int l = 0; l < s->nlanes; l++) {
			struct unit *u = &s->units[st][l];
			if (u->fsm.state == TPO_FSM_FAILED || u->fsm.state == TPO_FSM_OPEN ||
			    u->fsm.state == TPO_FSM_BACKOFF) {
				step(s, u, TPO_EV_RESET, 0, 0);
				n++;
			}
		}
	logmsg(LOG_NOTICE, "reset: %d unit(s) restarted on operator request", n);
}

static void reload(struct sup *s)
{
	struct tpo_config_errors errs;
	struct tpo_config *n = malloc(sizeof(*n));
	const struct tpo_config *c = s->cfg;
	struct tpo_fsm_params fp;
	int fsm_new, other;

	if (!n)
		return;
	if (!s->config_path) {
		logmsg(LOG_NOTICE, "SIGHUP: running the embedded default; nothing to reload");
		goto out;
	}
	if (tpo_config_load(n, s->config_path, &errs) < 0) {
		for (int i = 0; i < errs.n; i++)
			logmsg(LOG_ERR, "reload: %s", errs.msg[i]);
		logmsg(LOG_ERR, "reload: %s has errors; keeping the running configuration",
		       s->config_path);
		goto out;
	}
	/* What the command line set stays (--name, --listen). */
	strcpy(n->name, c->name);
	if (c->listen_cli) {
		memcpy(n->listen, c->listen, sizeof(n->listen));
		memcpy(n->listen_host, c->listen_host, sizeof(n->listen_host));
		n->listen_port = c->listen_port;
		n->listen_cli = 1;
	}
	/* The restart and circuit parameters (restart.* but quarantine_after)
	 * apply at once; everything else lives in the stages' processes, the
	 * segments' layout or was read at start: said, not claimed applied. */
	fp = n->restart.fsm;
	n->restart.fsm = c->restart.fsm;
	fsm_new = memcmp(&fp, &s->fp, sizeof(fp)) != 0;   /* against what runs now */
	other = memcmp(n, c, sizeof(*n)) != 0;
	if (!fsm_new && !other)
		logmsg(LOG_NOTICE, "reload: %s unchanged", s->config_path);
	if (fsm_new) {
		s->fp = fp;
		logmsg(LOG_NOTICE, "reload: restart and circuit parameters applied");
	}
	if (other)
		logmsg(LOG_WARNING, "reload: %s changes settings other than the restart and "
		       "circuit parameters (restart.*, but quarantine_after); they are not "
		       "applied: restart the instance for them (tpo-supervisor stop; start)",
		       s->config_path);
out:
	free(n);
}

static int setup_bells(int nbells)
{
	for (int i = 0; i < nbells; i++) {
		int fd = tpo_bell_open();
		if (fd < 0)
			return fd;
		if (dup2(fd, BELL_BASE + i) < 0) {
			close(fd);
			return -errno;
		}
		close(fd);
	}
	return 0;
}

int tpo_sup_run(const struct tpo_config *cfg, const char *config_path)
{
	static struct sup sup;   /* large; one per process */
	struct sup *s = &sup;
	struct tpo_ringset_spec spec;
	struct epoll_event evs[32];
	char err[256], *dump = NULL;
	sigset_t mask;
	int rc = TPO_EX_SYSTEM, n, e;

	memset(s, 0, sizeof(*s));
	s->cfg = cfg;
	s->config_path = config_path;
	s->name = cfg->name;
	s->fp = cfg->restart.fsm;
	s->self = getpid();
	s->rng = (uint64_t)tpo_now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
	s->epfd = s->sigfd = s->tfd = -1;

	if ((e = find_bindir(s->bindir, sizeof(s->bindir))) < 0) {
		logmsg(LOG_ERR, "fatal: unable to find my own directory: %s", strerror(-e));
		return TPO_EX_SYSTEM;
	}
	n = tpo_topology_lanes(&cfg->lanes, s->cpus, TPO_LANES_MAX, err, sizeof(err));
	if (n < 0) {
		logmsg(LOG_ERR, "fatal: %s", err[0] ? err : strerror(-n));
		return n == -EINVAL ? TPO_EX_CONFIG : TPO_EX_SYSTEM;
	}
	s->nlanes = n;

	/* Stages read the effective configuration from the rings segment. */
	dump = malloc(TPO_CONFIG_DUMP_MAX);
	if (!dump || tpo_config_dump(cfg, dump, TPO_CONFIG_DUMP_MAX) < 0) {
		logmsg(LOG_ERR, "fatal: unable to serialise the configuration");
		goto out;
	}
	/* Blocked (read from the signalfd once the loop runs) before the stats
	 * segment names our pid: a stop, reload or reset sent while the rest is
	 * set up waits for the loop instead of killing us half set up. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGPIPE);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	e = tpo_stats_create(&s->stats, s->name, (uint32_t)s->nlanes);
	if (e < 0) {
		if (e == -EEXIST)
			logmsg(LOG_ERR, "fatal: instance '%s' is already running "
			       "(stop it with: tpo-supervisor stop --name %s)", s->name, s->name);
		else
			logmsg(LOG_ERR, "fatal: unable to create /tpo.%s.stats: %s",
			       s->name, tpo_seg_strerror(e));
		goto out;
	}
	tpo_stats_set_instance(&s->stats, cfg->listen, s->cpus, s->nlanes);
	memset(&spec, 0, sizeof(spec));
	spec.nlanes = (uint32_t)s->nlanes;
	spec.max_len = cfg->rings.max_record;
	for (int st = 0; st < TPO_ST_COUNT; st++) {
		spec.capacity[st] = tpo_config_ring_capacity(cfg, st);
		if (!tpo_config_stage_runs(cfg, st))
			spec.absent |= 1u << st;
	}
	spec.config = dump;
	e = tpo_ringset_create(&s->rs, s->name, &spec);
	if (e < 0) {
		logmsg(LOG_ERR, "fatal: unable to create /tpo.%s.rings: %s",
		       s->name, tpo_seg_strerror(e));
		goto out_stats;
	}
	tpo_stats_set_rings(&s->stats, &s->rs);
	if ((e = setup_bells(TPO_ST_COUNT * s->nlanes)) < 0) {
		logmsg(LOG_ERR, "fatal: unable to create doorbells: %s", strerror(-e));
		goto out_rings;
	}

	prctl(PR_SET_CHILD_SUBREAPER, 1);
	s->epfd = epoll_create1(EPOLL_CLOEXEC);
	s->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (s->epfd < 0 || s->sigfd < 0 || s->tfd < 0) {
		logmsg(LOG_ERR, "fatal: unable to set up the event loop: %s", strerror(errno));
		goto out_loop;
	}
	{
		struct itimerspec its = {
			.it_interval = { 0, TICK_MS * 1000000L },
			.it_value = { 0, TICK_MS * 1000000L },
		};
		timerfd_settime(s->tfd, 0, &its, NULL);
	}
	s->sig_tag = TAG_SIG;
	s->timer_tag = TAG_TIMER;
	epoll_add(s->epfd, s->sigfd, &s->sig_tag);
	epoll_add(s->epfd, s->tfd, &s->timer_tag);
	if (sd_watchdog_enabled(0, &s->watchdog_usec) <= 0)
		s->watchdog_usec = 0;

	/* Downstream first: the front opens only once the pipeline exists. */
	for (int st = TPO_ST_COUNT - 1; st >= 0; st--) {
		for (int l = 0; l < s->nlanes; l++) {
			struct unit *u = &s->units[st][l];
			u->tag = TAG_UNIT;
			u->stage = st;
			u->lane = l;
			u->cpu = s->cpus[l];
			u->pidfd = -1;
			u->last_status = u->last_code = -1;
			u->pub_state = -1;
			tpo_fsm_init(&u->fsm);
			if (spec.absent & (1u << st)) {
				struct tpo_stats_sup_info v = {
					.state = TPO_UNIT_OFF, .last_status = -1,
					.last_exit_code = -1,
					.state_since_ns = tpo_now_ns(),
				};
				u->off = 1;
				tpo_stats_sup_set(&s->stats, st, l, &v);
				continue;
			}
			step(s, u, TPO_EV_START, 0, 0);
		}
	}
	logmsg(LOG_NOTICE, "instance '%s' running: %d lane(s) on cpu(s) %d%s, listening on http://%s",
	       s->name, s->nlanes, s->cpus[0], s->nlanes > 1 ? "..." : "", cfg->listen);
	sd_notifyf(0, "STATUS=starting %d lanes\nMAINPID=%d", s->nlanes, (int)getpid());

	for (;;) {
		n = epoll_wait(s->epfd, evs, 32, -1);
		if (n < 0 && errno != EINTR) {
			logmsg(LOG_ERR, "fatal: epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			int tag = *(int *)evs[i].data.ptr;
			if (tag == TAG_UNIT) {
				on_pidfd(s, evs[i].data.ptr);
			} else if (tag == TAG_TIMER) {
				uint64_t x;
				if (read(s->tfd, &x, sizeof(x)) < 0)
					continue;
				on_tick(s);
			} else if (tag == TAG_SIG) {
				struct signalfd_siginfo si;
				while (read(s->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
					if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
						begin_drain(s, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
					else if (si.ssi_signo == SIGHUP)
						reload(s);
					else if (si.ssi_signo == SIGUSR1)
						operator_reset(s);
					else if (si.ssi_signo == SIGCHLD)
						reap_orphans(s);
				}
			}
		}
		if (s->draining && drain_progress(s)) {
			rc = TPO_EX_OK;
			break;
		}
	}
	logmsg(LOG_NOTICE, "instance '%s' stopped", s->name);

out_loop:
	/* Nothing may outlive us: kill what is left (only on a fatal path). */
	for (int st = 0; st < TPO_ST_COUNT; st++)
		for (int l = 0; l < s->nlanes; l++)
			if (s->units[st][l].pid > 0) {
				kill(s->units[st][l].pid, SIGKILL);
				waitpid(s->units[st][l].pid, NULL, 0);
			}
	if (s->tfd >= 0) close(s->tfd);
	if (s->sigfd >= 0) close(s->sigfd);
	if (s->epfd >= 0) close(s->epfd);
out_rings:
	tpo_seg_unlink(s->name, "rings");      /* while we hold its lock (seg.h) */
	tpo_ringset_close(&s->rs);
out_stats:
	tpo_stats_destroy(&s->stats);
out:
	free(dump);
	return rc;
}

/* ---- commands against a running instance ---- */

/* Attaches name's stats segment if its supervisor lives (holds the
 * segment's lock: the pid written in it may be another process's by now);
 * says why not: -ENOENT no instance, -ESRCH its supervisor died. */
static int attach_or_say(struct tpo_stats *st, const char *name)
{
	int err = tpo_stats_attach(st, name, 0);

	if (err == 0 && tpo_seg_owner_alive(name, "stats") != 1) {
		tpo_stats_close(st);
		err = -ESRCH;
	}
	if (err == -ENOENT)
		fprintf(stderr, "tpo-supervisor: instance '%s' is not running\n", name);
	else if (err == -ESRCH)
		fprintf(stderr, "tpo-supervisor: instance '%s' is not running: its supervisor "
			"has died; its segments remain until the next start of that name\n", name);
	else if (err < 0)
		fprintf(stderr, "tpo-supervisor: fatal: unable to read /tpo.%s.stats: %s\n",
			name, tpo_seg_strerror(err));
	return err;
}

/* How long a drain of the running instance name may take: its fronts'
 * drain_timeout_ms, then each later stage's grace, and a margin; 60 s when
 * its configuration cannot be read. */
static int drain_bound_ms(const char *name)
{
	struct tpo_config_errors errs;
	struct tpo_config *c = malloc(sizeof(*c));
	struct tpo_ringset rs;
	int ms = 60000;

	if (!c)
		return ms;
	if (tpo_ringset_attach(&rs, name) == 0) {
		if (tpo_config_parse(c, (const char *)rs.seg.base + rs.hdr->config_off,
				     rs.hdr->config_len, "<instance configuration>", &errs) == 0)
			ms = (int)c->drain_timeout_ms + TPO_ST_COUNT * STOP_GRACE_MS + 5000;
		tpo_ringset_close(&rs);
	}
	free(c);
	return ms;
}

int tpo_sup_stop(const char *name, int timeout_ms)
{
	struct tpo_stats st;
	struct tpo_stats_info info;
	uint64_t end;
	pid_t pid;
	int pidfd, err;

	memset(&st, 0, sizeof(st));
	if ((err = attach_or_say(&st, name)) < 0)
		return err == -ESRCH ? TPO_EX_OK : TPO_EX_SYSTEM;   /* stopped already */
	if (tpo_stats_read_info(&st, &info) < 0 || info.sup_pid <= 0) {
		fprintf(stderr, "tpo-supervisor: instance '%s': supervisor pid unreadable\n", name);
		tpo_stats_close(&st);
		return TPO_EX_SYSTEM;
	}
	tpo_stats_close(&st);
	pid = info.sup_pid;
	/* A pidfd turns readable when the process has exited, even while it
	 * is an unreaped zombie (kill(pid, 0) would still succeed then). */
	pidfd = pidfd_open(pid);
	if (pidfd >= 0 && kill(pid, SIGTERM) < 0) {
		int e = errno;
		close(pidfd);
		pidfd = -e;
	}
	if (pidfd == -ESRCH) {
		fprintf(stderr, "tpo-supervisor: instance '%s' is not running "
			"(stale segments are removed at the next start)\n", name);
		return TPO_EX_OK;
	}
	if (pidfd < 0) {
		fprintf(stderr, "tpo-supervisor: unable to signal pid %d: %s\n",
			(int)pid, strerror(-pidfd));
		return TPO_EX_SYSTEM;
	}
	if (timeout_ms <= 0)
		timeout_ms = drain_bound_ms(name);
	end = now_ms() + (uint64_t)timeout_ms;
	for (;;) {
		struct pollfd pf = { .fd = pidfd, .events = POLLIN };
		uint64_t t = now_ms();
		int r;

		if (t >= end)
			break;
		r = poll(&pf, 1, (int)(end - t));
		if (r > 0) {
			close(pidfd);
			printf("instance '%s' stopped\n", name);
			return TPO_EX_OK;
		}
		if (r < 0 && errno != EINTR)
			break;
	}
	close(pidfd);
	fprintf(stderr, "tpo-supervisor: instance '%s' (pid %d) is still draining after %d ms\n",
		name, (int)pid, timeout_ms);
	return TPO_EX_SYSTEM;
}

int tpo_sup_signal(const char *name, int sig)
{
	struct tpo_stats st;
	struct tpo_stats_info info;

	memset(&st, 0, sizeof(st));
	if (attach_or_say(&st, name) < 0)
		return TPO_EX_SYSTEM;
	if (tpo_stats_read_info(&st, &info) < 0 || info.sup_pid <= 0 ||
	    kill(info.sup_pid, sig) < 0) {
		fprintf(stderr, "tpo-supervisor: instance '%s': unable to signal the supervisor\n",
			name);
		tpo_stats_close(&st);
		return TPO_EX_SYSTEM;
	}
	tpo_stats_close(&st);
	return TPO_EX_OK;
}

int tpo_sup_status(const char *name)
{
	struct tpo_stats st;
	struct tpo_stats_info info;
	struct tpo_proc_snapshot p;

	memset(&st, 0, sizeof(st));
	if (attach_or_say(&st, name) < 0)
		return TPO_EX_SYSTEM;
	if (tpo_stats_read_info(&st, &info) < 0) {
		tpo_stats_close(&st);
		return TPO_EX_SYSTEM;
	}
	printf("instance %s  supervisor pid %d  lanes %u  listen %s%s\n",
	       info.name, (int)info.sup_pid, info.nlanes, info.listen,
	       info.draining ? "  (draining)" : "");
	printf("%-9s %4s %4s %8s %-10s %8s %10s %10s\n",
	       "STAGE", "LANE", "CPU", "PID", "STATE", "RESTARTS", "IN", "OUT");
	for (int s = 0; s < TPO_ST_COUNT; s++) {
		for (uint32_t l = 0; l < info.nlanes; l++) {
			if (tpo_stats_read_proc(&st, s, (int)l, &p) < 0)
				continue;
			char pid[16] = "-"; /* no process: rag "off", between restarts */

			if (p.pid > 0)
				snprintf(pid, sizeof(pid), "%d", (int)p.pid);
			printf("%-9s %4u %4d %8s %-10s %8u %10llu %10llu\n",
			       tpo_stage_name(s), l, (int)info.lane_cpu[l], pid,
			       tpo_unit_state_name((int)p.state), p.restarts,
			       (unsigned long long)p.req_in, (unsigned long long)p.req_out);
		}
	}
	tpo_stats_close(&st);
	return TPO_EX_OK;
}
