/*
 * test_supervisor.c — the supervisor (issue 3) with real processes and
 * signals: pinning, restarts, PDEATHSIG, a second start, config errors,
 * usage, draining stop, and the restart circuit.
 */
#include "tests/integration/harness.h"

#include <sched.h>
#include <sys/mman.h>

/* Five stages: rag runs without retrieval only when asked to. */
#define FAST_CFG \
	"{\"lanes\": 2, \"restart\": {\"base_ms\": 10, \"cap_ms\": 50}," \
	" \"stages\": {\"rag\": {\"enabled\": true}," \
	" \"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 8}}}}"
/* The default without retrieval: no rag, the fronts write into assemble. */
#define NORAG_CFG \
	"{\"lanes\": 2, \"restart\": {\"base_ms\": 10, \"cap_ms\": 50}," \
	" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 8}}}}"

static struct h_inst in;

TestSuite(supervisor, .fini = h_cleanup, .timeout = 120);

/* Non-streaming chat with a session id; returns the lane that served it. */
static int chat_lane(const char *session, int *status)
{
	struct h_conn c;
	char body[512], hdr[128];
	int lane;

	h_chat_body(body, sizeof(body), "ping [[tpo:tokens=2]]", 0, NULL);
	snprintf(hdr, sizeof(hdr), "X-Session-Id: %s\r\n", session);
	h_http(&c, in.port, "POST", "/v1/chat/completions", hdr, body);
	*status = c.status;
	lane = h_lane(&c);
	h_conn_free(&c);
	return lane;
}

/* A session id that the front maps to lane, found by asking it. */
static void session_for_lane(int lane, char *sid, size_t cap)
{
	int status;

	for (int i = 0; i < 64; i++) {
		snprintf(sid, cap, "sess-%d", i);
		if (chat_lane(sid, &status) == lane) {
			cr_assert_eq(status, 200);
			return;
		}
	}
	cr_assert_fail("no session maps to lane %d", lane);
}

/* Waits until (stage, lane) runs a process other than old_pid; its snapshot. */
static void wait_restarted(const struct tpo_stats *st, int stage, int lane, pid_t old_pid,
			   struct tpo_proc_snapshot *p)
{
	uint64_t end = h_now_ms() + H_HANG_MS;

	do {
		h_proc(st, stage, lane, p);
		if (p->pid > 0 && p->pid != old_pid && p->state == TPO_UNIT_RUNNING &&
		    p->child_pid == p->pid)
			return;
		h_sleep_ms(5);
	} while (h_now_ms() < end);
	cr_assert_fail("stage %d lane %d not restarted (state %u pid %d)", stage, lane,
		       p->state, p->pid);
}

static void wait_ready_lane(int lane)
{
	char sid[32];
	int status;
	uint64_t end = h_now_ms() + H_HANG_MS;

	session_for_lane(lane, sid, sizeof(sid));
	while (chat_lane(sid, &status) != lane && h_now_ms() < end)
		h_sleep_ms(10);
}

/* The `status` line of stage[lane]: its pid (0 for the "-" of a unit
 * without a process), state and restarts. */
static int status_of(const char *stage, int lane, char *state, unsigned *restarts)
{
	static char out[16384];
	char *line;

	cr_assert_eq(h_sup(out, sizeof(out), "status", "--name", in.name, NULL, NULL, NULL), 0,
		     "%s", out);
	for (line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
		char st[32], pid[16];
		unsigned l;
		int cpu;
		if (sscanf(line, "%31s %u %d %15s %31s %u", st, &l, &cpu, pid, state, restarts) == 6 &&
		    !strcmp(st, stage) && (int)l == lane) {
			if (!strcmp(pid, "-"))
				return 0;
			cr_assert_gt(atoi(pid), 0, "pid column: %s", pid);
			return atoi(pid);
		}
	}
	cr_assert_fail("no status line for %s[%d]", stage, lane);
	return -1;
}

Test(supervisor, children_pinned_to_lane_cpu)
{
	struct tpo_stats st;
	struct tpo_stats_info info;
	int checked = 0;

	h_start(&in, "pin", FAST_CFG);
	h_stats_attach(&in, &st);
	h_info(&st, &info);
	cr_assert_eq(info.nlanes, 2);
	cr_assert_eq(info.sup_pid, in.pid);
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (uint32_t l = 0; l < info.nlanes; l++) {
			struct tpo_proc_snapshot p;
			char path[64], buf[4096], want[16], *line;
			h_proc(&st, s, (int)l, &p);
			cr_assert_gt(p.pid, 0);
			cr_assert_eq(p.state, TPO_UNIT_RUNNING);
			snprintf(path, sizeof(path), "/proc/%d/status", (int)p.pid);
			cr_assert_gt(h_read_file(path, buf, sizeof(buf)), 0);
			line = strstr(buf, "Cpus_allowed_list:");
			cr_assert_not_null(line);
			line += strlen("Cpus_allowed_list:");
			while (*line == '\t' || *line == ' ')
				line++;
			*strchr(line, '\n') = 0;
			cr_assert_geq(info.lane_cpu[l], 0, "lane %u unpinned", l);
			snprintf(want, sizeof(want), "%d", info.lane_cpu[l]);
			cr_assert_str_eq(line, want, "%s[%u] pid %d allowed on %s, lane cpu %s",
					 tpo_stats_stage_name(s), l, (int)p.pid, line, want);
			checked++;
		}
	cr_assert_eq(checked, 10);
	/* The supervisor itself is not pinned to one lane. */
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * Without retrieval there is no rag process: the rag units are "off", the
 * fronts' rings lead to assemble, requests are answered, and a tpo-rag
 * started by hand for the instance refuses to run (78).
 */
Test(supervisor, no_rag_process_without_retrieval)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES];
	struct tpo_stats st;
	struct tpo_ringset rs;
	char state[32], out[4096], path[4096];
	char *argv[] = { path, "--instance", NULL, "--lane", "0", "--lanes", "2",
			 "--bell-base", "100", NULL };
	unsigned restarts;
	int status;

	h_start(&in, "norag", NORAG_CFG);
	cr_assert_eq(h_stage_pids(&in, pids), 8);
	h_stats_attach(&in, &st);
	for (int l = 0; l < 2; l++) {
		struct tpo_proc_snapshot p;
		h_proc(&st, TPO_STAGE_RAG, l, &p);
		cr_assert_eq(p.state, TPO_UNIT_OFF, "rag[%d] state %u", l, p.state);
		cr_assert_eq(p.pid, 0);
		cr_assert_eq(status_of("rag", l, state, &restarts), 0);
		cr_assert_str_eq(state, "off");
	}
	tpo_stats_close(&st);
	cr_assert_eq(tpo_ringset_attach(&rs, in.name), 0);
	cr_assert_eq(rs.hdr->absent, 1u << TPO_ST_RAG);
	for (int i = 0; i < 2; i++) {
		for (int j = 0; j < 2; j++)
			cr_assert_geq(tpo_ringset_index(&rs, TPO_ST_STREAM, j, TPO_ST_ASSEMBLE, i), 0);
		cr_assert_lt(tpo_ringset_index(&rs, TPO_ST_STREAM, i, TPO_ST_RAG, i), 0);
		cr_assert_lt(tpo_ringset_index(&rs, TPO_ST_RAG, i, TPO_ST_ASSEMBLE, i), 0);
	}
	cr_assert_eq(rs.hdr->nrings, 2 * 2 * 2 + 2 * 2);
	tpo_ringset_close(&rs);
	for (int l = 0; l < 2; l++) {
		char sid[32];
		session_for_lane(l, sid, sizeof(sid));
		cr_assert_eq(chat_lane(sid, &status), l);
		cr_assert_eq(status, 200);
	}
	snprintf(path, sizeof(path), "%s/tpo-rag", h_build());
	argv[2] = in.name;
	cr_assert_eq(h_run(argv, out, sizeof(out), H_HANG_MS), 78, "%s", out);
	cr_assert(strstr(out, "runs without rag processes (stages.rag.enabled)"), "%s", out);
	h_stop(&in);
}

/* Every stage process of a running instance has scheduling policy want. */
static void assert_policy(struct tpo_stats *st, int want, const char *what)
{
	for (int s = 0; s < TPO_NSTAGES; s++)
		for (int l = 0; l < 2; l++) {
			struct tpo_proc_snapshot p;
			h_proc(st, s, l, &p);
			if (s == TPO_STAGE_RAG && p.state == TPO_UNIT_OFF)
				continue;
			cr_assert_gt(p.pid, 0);
			cr_assert_eq(sched_getscheduler(p.pid), want, "%s: %s[%d] pid %d has policy %d",
				     what, tpo_stats_stage_name(s), l, (int)p.pid,
				     sched_getscheduler(p.pid));
		}
}

Test(supervisor, stages_run_sched_batch_unless_told_normal)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	struct sched_param sp = { .sched_priority = 0 };
	int old;

	h_start(&in, "schb", FAST_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	assert_policy(&st, SCHED_BATCH, "default");
	/* A restarted stage gets the policy again. */
	h_proc(&st, TPO_STAGE_POST, 1, &p);
	cr_assert_eq(kill(p.pid, SIGKILL), 0);
	wait_restarted(&st, TPO_STAGE_POST, 1, p.pid, &p);
	cr_assert_eq(sched_getscheduler(p.pid), SCHED_BATCH);
	/* The supervisor itself keeps the policy it was started with. */
	cr_assert_eq(sched_getscheduler(in.pid), sched_getscheduler(0));
	tpo_stats_close(&st);
	h_stop(&in);

	/* "normal" is SCHED_OTHER even when the supervisor runs SCHED_BATCH. */
	old = sched_getscheduler(0);
	cr_assert_eq(sched_setscheduler(0, SCHED_BATCH, &sp), 0);
	h_start(&in, "schn",
		"{\"lanes\": 2, \"sched\": \"normal\","
		" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}");
	cr_assert_eq(sched_setscheduler(0, old, &sp), 0);
	cr_assert_eq(sched_getscheduler(in.pid), SCHED_BATCH);
	h_stats_attach(&in, &st);
	assert_policy(&st, SCHED_OTHER, "\"sched\": \"normal\"");
	tpo_stats_close(&st);
	h_stop(&in);
}

/* The deterministic answer to a prompt (non-streaming, any lane). */
static void reference(struct h_conn *c, char *text, size_t cap)
{
	struct h_json j;

	cr_assert_eq(h_read_head(c), 0);
	cr_assert_eq(h_read_body(c), 0);
	cr_assert_eq(c->status, 200, "%d %s", c->status, c->body);
	cr_assert_eq(h_json_parse(&j, c->body), 0);
	cr_assert_gt(h_json_str(&j, "choices.0.message.content", text, cap), 0);
	h_json_free(&j);
	h_conn_free(c);
}

/*
 * Reads a stream to its end; its content must be the reference (complete
 * with [DONE]) or a prefix of it followed by exactly one error event: no
 * token lost or repeated, no hang. Returns 1 complete, 0 error.
 */
static int stream_outcome(struct h_conn *c, const char *ref, int i)
{
	static char ev[1 << 16];
	char text[8192];
	size_t tl = 0;
	int r, done = 0, errors = 0;

	text[0] = 0;
	while ((r = h_sse_next(c, ev, sizeof(ev))) == 1) {
		struct h_json j;
		int n;
		cr_assert_eq(done + errors, 0, "stream %d: event after the end: %s", i, ev);
		if (!strcmp(ev, "[DONE]")) {
			done = 1;
			continue;
		}
		if (strstr(ev, "\"error\"")) {
			h_assert_oai_error(ev, NULL);
			errors++;
			continue;
		}
		cr_assert_eq(h_json_parse(&j, ev), 0, "%s", ev);
		if (h_json_size(&j, "choices") == 1 && h_json_null(&j, "choices.0.finish_reason")) {
			n = h_json_str(&j, "choices.0.delta.content", text + tl, sizeof(text) - tl);
			cr_assert_geq(n, 0);
			tl += (size_t)n;
		}
		h_json_free(&j);
	}
	cr_assert_eq(r, 0, "stream %d did not end cleanly", i);
	cr_assert_eq(done + errors, 1, "stream %d: done %d errors %d", i, done, errors);
	if (done)
		cr_assert_str_eq(text, ref, "stream %d: content \"%s\" differs from the reference "
				 "\"%s\"", i, text, ref);
	else
		cr_assert_eq(strncmp(text, ref, tl), 0, "stream %d: \"%s\" is not a prefix of "
			     "\"%s\"", i, text, ref);
	return done;
}

/*
 * Stage `stage` of lane 1 under load: N1 streams are running; the process
 * is frozen (SIGSTOP) while N2 more are admitted and queue up in front of
 * or behind it, then SIGKILLed. The supervisor restarts it; the queued
 * requests must all complete exactly (redelivery, no duplicates), the
 * running ones complete or end with one error, and the lane serves again.
 */
static void kill_under_load_cfg(int stage, const char *tag, const char *cfg)
{
	enum { N1 = 3, N2 = 3, N = N1 + N2 };
	struct h_conn cs[N];
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	static char refs[N][8192];
	char sid[32], hdr[64], prompt[128], body[512], ev[8192];
	int status, complete = 0;

	h_start(&in, tag, cfg);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	/* References, fetched concurrently. */
	for (int i = 0; i < N; i++) {
		snprintf(prompt, sizeof(prompt), "load %d [[tpo:tps=20]] [[tpo:tokens=12]]", i);
		h_chat_body(body, sizeof(body), prompt, 0, NULL);
		h_begin(&cs[i], in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	}
	for (int i = 0; i < N; i++)
		reference(&cs[i], refs[i], sizeof(refs[i]));
	session_for_lane(1, sid, sizeof(sid));
	snprintf(hdr, sizeof(hdr), "X-Session-Id: %s\r\n", sid);
	for (int i = 0; i < N1; i++) {
		snprintf(prompt, sizeof(prompt), "load %d [[tpo:tps=20]] [[tpo:tokens=12]]", i);
		h_chat_body(body, sizeof(body), prompt, 1, NULL);
		h_open(&cs[i], in.port, "POST", "/v1/chat/completions", hdr, body, strlen(body));
		cr_assert_eq(cs[i].status, 200);
		cr_assert_eq(h_lane(&cs[i]), 1);
		cr_assert_eq(h_sse_next(&cs[i], ev, sizeof(ev)), 1);
		cr_assert(strstr(ev, "\"role\":\"assistant\""), "%s", ev);
		/* Put the first event back for stream_outcome. */
		cs[i].ev_pos = 0;
	}
	h_proc(&st, stage, 1, &p0);
	cr_assert_eq(p0.restarts, 0);
	cr_assert_eq(kill(p0.pid, SIGSTOP), 0);
	for (int i = N1; i < N; i++) {
		struct tpo_proc_snapshot s0;
		uint64_t end = h_now_ms() + H_HANG_MS;
		snprintf(prompt, sizeof(prompt), "load %d [[tpo:tps=20]] [[tpo:tokens=12]]", i);
		h_chat_body(body, sizeof(body), prompt, 1, NULL);
		h_begin(&cs[i], in.port, "POST", "/v1/chat/completions", hdr, body, strlen(body));
		/* Wait until a front has admitted it. */
		do {
			int64_t inflight = 0;
			for (int l = 0; l < 2; l++) {
				h_proc(&st, TPO_STAGE_STREAM, l, &s0);
				inflight += s0.in_flight;
			}
			if (inflight >= i + 1)
				break;
			h_sleep_ms(2);
		} while (h_now_ms() < end);
	}
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);
	wait_restarted(&st, stage, 1, p0.pid, &p);
	cr_assert_eq(p.restarts, 1);
	cr_assert_eq(p.last_signal, SIGKILL);
	for (int i = 0; i < N; i++) {
		if (i >= N1) {
			cr_assert_eq(h_read_head(&cs[i]), 0, "queued stream %d: no head", i);
			cr_assert_eq(cs[i].status, 200, "queued stream %d: status %d", i, cs[i].status);
			cr_assert_eq(h_lane(&cs[i]), 1);
		}
		if (stream_outcome(&cs[i], refs[i], i))
			complete++;
		else
			cr_assert_lt(i, N1, "queued stream %d ended with an error", i);
		h_conn_free(&cs[i]);
	}
	cr_assert_geq(complete, N2);
	cr_log_info("%s: %d of %d streams complete", tag, complete, N);
	/* `status` shows the restart, and the lane serves again. */
	{
		char state[32];
		unsigned restarts;
		cr_assert_eq(status_of(tpo_stats_stage_name(stage), 1, state, &restarts), p.pid);
		cr_assert_str_eq(state, "running");
		cr_assert_eq(restarts, 1);
	}
	wait_ready_lane(1);
	cr_assert_eq(chat_lane(sid, &status), 1);
	cr_assert_eq(status, 200);
	tpo_stats_close(&st);
	h_stop(&in);
}

static void kill_under_load(int stage, const char *tag)
{
	kill_under_load_cfg(stage, tag, FAST_CFG);
}

Test(supervisor, killed_rag_under_load)      { kill_under_load(TPO_STAGE_RAG, "krag"); }
/* Without rag, assemble reads the fronts' rings: its restart redelivers them. */
Test(supervisor, killed_assemble_without_rag_under_load)
{
	kill_under_load_cfg(TPO_STAGE_ASSEMBLE, "kasm0", NORAG_CFG);
}
Test(supervisor, killed_assemble_under_load) { kill_under_load(TPO_STAGE_ASSEMBLE, "kasm"); }
Test(supervisor, killed_infer_under_load)    { kill_under_load(TPO_STAGE_INFER, "kinf"); }
Test(supervisor, killed_post_under_load)     { kill_under_load(TPO_STAGE_POST, "kpost"); }

Test(supervisor, killed_stream_under_load)
{
	enum { N = 6 };
	struct h_conn cs[N];
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	char body[512], ev[8192];
	int broken = 0;

	h_start(&in, "kstr", FAST_CFG);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	for (int i = 0; i < N; i++) {
		snprintf(body, sizeof(body), "{\"stream\":true,\"messages\":[{\"role\":\"user\","
			 "\"content\":\"s %d [[tpo:tps=20]] [[tpo:tokens=12]]\"}]}", i);
		h_open(&cs[i], in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
		cr_assert_eq(cs[i].status, 200);
		cr_assert_eq(h_sse_next(&cs[i], ev, sizeof(ev)), 1);
	}
	h_proc(&st, TPO_STAGE_STREAM, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);
	wait_restarted(&st, TPO_STAGE_STREAM, 0, p0.pid, &p);
	/* The killed front's clients see their connection end; the other
	 * front's complete. Nobody hangs. */
	for (int i = 0; i < N; i++) {
		int r, done = 0;
		while ((r = h_sse_next(&cs[i], ev, sizeof(ev))) == 1)
			if (!strcmp(ev, "[DONE]"))
				done = 1;
		if (r < 0)
			broken++;
		else
			cr_assert(done, "stream %d ended cleanly without [DONE]", i);
		cr_assert(cs[i].error != EAGAIN && cs[i].error != EWOULDBLOCK, "stream %d hung", i);
		h_conn_free(&cs[i]);
	}
	cr_log_info("%d of %d streams were on the killed front", broken, N);
	cr_assert(h_ready(in.port));
	{
		int status;
		cr_assert_geq(chat_lane("after", &status), 0);
		cr_assert_eq(status, 200);
	}
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(supervisor, stop_times_out_long_stream)
{
	struct h_conn c;
	char body[512];
	int content, errors, done, status;

	h_start(&in, "dto",
		"{\"lanes\": 1, \"drain_timeout_ms\": 300,"
		" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}");
	h_chat_body(body, sizeof(body), "endless [[tpo:tps=20]] [[tpo:tokens=100000]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	cr_assert_eq(kill(in.pid, SIGTERM), 0);
	h_drain_stream(&c, &content, &errors, &done);
	cr_assert_eq(errors, 1, "the cut stream got no error event");
	cr_assert_not(done);
	h_conn_free(&c);
	status = h_wait_exit(in.pid, H_HANG_MS);
	in.stopped = 1;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "supervisor: %d", status);
	cr_assert_not(h_shm_left(in.name));
	h_check_log(&in);
	h_unlink_files(&in);
}

Test(supervisor, killed_supervisor_takes_stages_along)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES];
	char name[40];
	int n, status;

	h_start(&in, "orph", FAST_CFG);
	n = h_stage_pids(&in, pids);
	cr_assert_eq(n, 10);
	cr_assert_eq(kill(in.pid, SIGKILL), 0);
	status = h_wait_exit(in.pid, H_HANG_MS);
	in.stopped = 1;
	cr_assert(WIFSIGNALED(status));
	h_assert_pids_gone(pids, TPO_NSTAGES * TPO_MAX_LANES);
	/* Its segments are left behind... */
	cr_assert(h_shm_left(in.name));
	/* ...status says the instance is not running (not its dead stages
	 * "running"), and fails; with its pid now another process's (a reused
	 * pid: a child of ours written into the segment), stop and reload
	 * signal nobody and say it is not running... */
	{
		char out[4096], path[256];
		struct tpo_stats_shm *m;
		pid_t other = fork();
		int fd, st2;

		cr_assert_geq(other, 0);
		if (other == 0) {
			pause();
			_exit(0);
		}
		snprintf(path, sizeof(path), "/dev/shm/tpo.%s.stats", in.name);
		fd = open(path, O_RDWR);
		cr_assert_geq(fd, 0);
		m = mmap(NULL, sizeof(*m), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		cr_assert_neq(m, MAP_FAILED);
		close(fd);
		atomic_store(&m->hdr.sup_pid, (uint32_t)other);
		munmap(m, sizeof(*m));
		cr_assert_eq(h_sup(out, sizeof(out), "status", "--name", in.name, NULL, NULL, NULL),
			     111, "%s", out);
		cr_assert(strstr(out, "is not running"), "%s", out);
		cr_assert_null(strstr(out, "running   "), "%s", out);
		cr_assert_eq(h_sup(out, sizeof(out), "stop", "--name", in.name, NULL, NULL, NULL),
			     0, "%s", out);
		cr_assert(strstr(out, "is not running"), "%s", out);
		cr_assert_eq(h_sup(out, sizeof(out), "reload", "--name", in.name, NULL, NULL, NULL),
			     111, "%s", out);
		cr_assert_eq(waitpid(other, &st2, WNOHANG), 0, "the process with the reused pid "
			     "was signalled");
		kill(other, SIGKILL);
		cr_assert_eq(waitpid(other, &st2, 0), other);
	}
	/* ...and a new start of the same name replaces them. */
	strcpy(name, in.name);
	h_unlink_files(&in);
	h_start(&in, "orph", FAST_CFG);
	cr_assert_str_eq(in.name, name);
	cr_assert_geq(chat_lane("x", &status), 0);
	cr_assert_eq(status, 200);
	h_stop(&in);
	cr_assert_not(h_shm_left(name));
}

/*
 * SIGTERM while a stage waits to restart (its backoff): it still restarts,
 * and the requests queued in its lane finish during the drain (they were
 * left to the drain timeout, 503, when the drain stopped every unit
 * without a process at once).
 */
Test(supervisor, drain_restarts_a_stage_in_backoff)
{
	enum { N = 3 };
	struct h_conn cs[N];
	struct tpo_stats st;
	struct tpo_proc_snapshot p0, p;
	char body[512];
	uint64_t end;
	int status;

	h_start(&in, "drbk",
		"{\"lanes\": 1, \"restart\": {\"base_ms\": 3000, \"cap_ms\": 3000, \"jitter_pct\": 0},"
		" \"stages\": {\"infer\": {\"max_inflight\": 1,"
		" \"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 8}}}}");
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	for (int i = 0; i < N; i++) {
		char content[64];
		snprintf(content, sizeof(content), "q%d [[tpo:delay_ms=300]] [[tpo:tokens=2]]", i);
		h_chat_body(body, sizeof(body), content, 0, NULL);
		h_begin(&cs[i], in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	}
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_STREAM, 0, N), N, "not all admitted");
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 1), 1, "none in inference");
	h_proc(&st, TPO_STAGE_INFER, 0, &p0);
	cr_assert_eq(kill(p0.pid, SIGKILL), 0);
	end = h_now_ms() + H_HANG_MS;
	do {
		h_proc(&st, TPO_STAGE_INFER, 0, &p);
		if (p.state == TPO_UNIT_BACKOFF)
			break;
		h_sleep_ms(2);
	} while (h_now_ms() < end);
	cr_assert_eq(p.state, TPO_UNIT_BACKOFF, "state %u", p.state);
	tpo_stats_close(&st);
	cr_assert_eq(kill(in.pid, SIGTERM), 0);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(h_read_head(&cs[i]), 0, "request %d: no answer", i);
		cr_assert_eq(cs[i].status, 200, "request %d: status %d", i, cs[i].status);
		h_conn_free(&cs[i]);
	}
	status = h_wait_exit(in.pid, H_HANG_MS);
	in.stopped = 1;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x", status);
	cr_assert_not(h_shm_left(in.name));
}

/* A configuration file edited into errors after start does not keep
 * status and stop -c FILE from the running instance (its "name" is read all
 * the same); one that is not even JSON does (exit 78, nothing stopped). */
Test(supervisor, stop_with_a_broken_file_still_stops)
{
	char out[8192], cfg[512];

	h_start(&in, "brk", FAST_CFG);
	h_write_file(in.cfg, "{ not json");
	cr_assert_eq(h_sup(out, sizeof(out), "stop", "-c", in.cfg, NULL, NULL, NULL), 78, "%s", out);
	cr_assert_eq(h_sup(out, sizeof(out), "status", "--name", in.name, NULL, NULL, NULL), 0,
		     "%s", out);
	snprintf(cfg, sizeof(cfg), "{\"name\": \"%s\", \"lanes\": \"many\"}", in.name);
	h_write_file(in.cfg, cfg);
	cr_assert_eq(h_sup(out, sizeof(out), "status", "-c", in.cfg, NULL, NULL, NULL), 0, "%s", out);
	cr_assert(strstr(out, "lanes"), "the file's error is not shown: %s", out);
	cr_assert_eq(h_sup(out, sizeof(out), "stop", "-c", in.cfg, NULL, NULL, NULL), 0, "%s", out);
	cr_assert(strstr(out, "stopped"), "%s", out);
	cr_assert_eq(h_wait_exit(in.pid, H_HANG_MS), 0);
	in.stopped = 1;
	cr_assert_not(h_shm_left(in.name));
}

Test(supervisor, second_start_same_name_fails)
{
	char out[8192], listen[64];
	char path[4096];
	int status;

	h_start(&in, "dup", FAST_CFG);
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", h_free_port());
	{
		char *argv[] = { path, "start", "-c", in.cfg, "--name", in.name, "--listen",
				 listen, NULL };
		snprintf(path, sizeof(path), "%s/tpo-supervisor", h_build());
		cr_assert_eq(h_run(argv, out, sizeof(out), H_HANG_MS), 111, "%s", out);
	}
	cr_assert(strstr(out, "already running"), "message: %s", out);
	/* The running instance is unharmed. */
	cr_assert(h_ready(in.port));
	cr_assert_geq(chat_lane("dup", &status), 0);
	cr_assert_eq(status, 200);
	cr_assert_eq(h_sup(out, sizeof(out), "status", "--name", in.name, NULL, NULL, NULL), 0);
	cr_assert(strstr(out, "running"), "%s", out);
	h_stop(&in);
}

Test(supervisor, bad_config_check_and_start)
{
	char out[8192], cfg[128], name[40], path[4096];
	const char *text =
		"{\n"
		"  \"lanes\": 0,\n"
		"  \"stagse\": {},\n"
		"  \"admission\": {\"policy\": \"random\"}\n"
		"}\n";

	snprintf(cfg, sizeof(cfg), "/tmp/tpo-it.bad%d.json", (int)getpid());
	snprintf(name, sizeof(name), "it%d_bad", (int)getpid());
	h_write_file(cfg, text);
	cr_assert_eq(h_sup(out, sizeof(out), "check", "-c", cfg, NULL, NULL, NULL), 78, "%s", out);
	cr_assert(strstr(out, "lanes: "), "%s", out);
	cr_assert(strstr(out, " at 2:12"), "%s", out);
	cr_assert(strstr(out, "stagse: unknown key at 3:3"), "%s", out);
	cr_assert(strstr(out, "admission.policy: "), "%s", out);
	cr_assert(strstr(out, " at 4:27"), "%s", out);
	{
		char *argv[] = { path, "start", "-c", cfg, "--name", name, NULL };
		snprintf(path, sizeof(path), "%s/tpo-supervisor", h_build());
		cr_assert_eq(h_run(argv, out, sizeof(out), H_HANG_MS), 78, "%s", out);
	}
	cr_assert(strstr(out, "stagse: unknown key at 3:3"), "%s", out);
	cr_assert_not(h_shm_left(name));
	/* Missing file: a configuration error too. */
	cr_assert_eq(h_sup(out, sizeof(out), "check", "-c", "/nonexistent/tpo.json", NULL, NULL,
			   NULL), 78, "%s", out);
	/* A good one passes. */
	h_write_file(cfg, "{\"lanes\": 1}\n");
	cr_assert_eq(h_sup(out, sizeof(out), "check", "-c", cfg, NULL, NULL, NULL), 0, "%s", out);
	unlink(cfg);
}

Test(supervisor, usage_and_exit_codes)
{
	char out[8192];

	cr_assert_eq(h_sup(out, sizeof(out), "--help", NULL, NULL, NULL, NULL, NULL), 0);
	cr_assert(strstr(out, "usage: tpo-supervisor"), "%s", out);
	cr_assert_eq(h_sup(out, sizeof(out), "start", "--help", NULL, NULL, NULL, NULL), 0);
	cr_assert_eq(h_sup(out, sizeof(out), "frobnicate", NULL, NULL, NULL, NULL, NULL), 64);
	cr_assert(strstr(out, "unknown command"), "%s", out);
	cr_assert_eq(h_sup(out, sizeof(out), NULL, NULL, NULL, NULL, NULL, NULL), 64);
	cr_assert_eq(h_sup(out, sizeof(out), "start", "--bogus", NULL, NULL, NULL, NULL), 64);
	cr_assert_eq(h_sup(out, sizeof(out), "check", NULL, NULL, NULL, NULL, NULL), 64);
	cr_assert_eq(h_sup(out, sizeof(out), "status", "--name", "bad/name", NULL, NULL, NULL), 64);
	cr_assert_eq(h_sup(out, sizeof(out), "start", "--listen", "nowhere", "--name", "itnever",
			   NULL), 64, "%s", out);
	/* A --timeout that is no number of milliseconds is refused, not 60 s. */
	cr_assert_eq(h_sup(out, sizeof(out), "stop", "--name", "it-none-such", "--timeout", "abc",
			   NULL), 64, "%s", out);
	cr_assert(strstr(out, "--timeout abc"), "%s", out);
	cr_assert_eq(h_sup(out, sizeof(out), "stop", "--name", "it-none-such", "--timeout", "-5",
			   NULL), 64, "%s", out);
	/* status / stop of an instance that does not exist. */
	cr_assert_eq(h_sup(out, sizeof(out), "status", "--name", "it-none-such", NULL, NULL, NULL),
		     111);
	cr_assert(strstr(out, "not running"), "%s", out);
	cr_assert_eq(h_sup(out, sizeof(out), "stop", "--name", "it-none-such", NULL, NULL, NULL),
		     111);
}

Test(supervisor, stop_drains_in_flight_stream)
{
	struct h_conn c;
	char body[512], text[8192], fin[32], out[4096], path[4096];
	int64_t usage;
	pid_t stopper;
	int status, fd;
	uint64_t end;

	h_start(&in, "drain",
		"{\"lanes\": 2, \"drain_timeout_ms\": 20000,"
		" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0}}}}");
	h_chat_body(body, sizeof(body), "long [[tpo:tps=10]] [[tpo:tokens=30]]", 1, NULL);
	h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
	cr_assert_eq(c.status, 200);
	/* tpo-supervisor stop, in the background: it waits for the drain. */
	snprintf(path, sizeof(path), "%s/tpo-supervisor", h_build());
	stopper = fork();
	cr_assert_geq(stopper, 0);
	if (stopper == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		dup2(null, 2);
		execl(path, path, "stop", "--name", in.name, (char *)NULL);
		_exit(127);
	}
	/* New connections are refused once the fronts stop accepting. */
	end = h_now_ms() + H_HANG_MS;
	while ((fd = h_connect_raw(in.port)) >= 0 && h_now_ms() < end) {
		close(fd);
		h_sleep_ms(5);
	}
	/* Refused, or reset as the last listener of the port closes. */
	cr_assert_lt(fd, 0, "connections still accepted while draining");
	cr_assert(fd == -ECONNREFUSED || fd == -ECONNRESET || fd == -ECONNABORTED,
		  "connect while draining: %s", strerror(-fd));
	/* The stream in flight completes. */
	cr_assert_eq(h_read_stream(&c, 1, text, sizeof(text), fin, sizeof(fin), &usage), 30);
	cr_assert_eq(usage, 30);
	cr_assert_str_eq(fin, "stop");
	h_conn_free(&c);
	status = h_wait_exit(stopper, H_HANG_MS * 2);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "stop failed: %d", status);
	status = h_wait_exit(in.pid, H_HANG_MS);
	in.stopped = 1;
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "supervisor: %d", status);
	cr_assert_not(h_shm_left(in.name));
	(void)out;
	h_check_log(&in);
	h_unlink_files(&in);
}

/* SIGKILLs stage[lane]'s process, each time it runs again, until its
 * circuit opens; returns the kills it took (at most max). */
static int crash_until_open(const struct tpo_stats *st, int stage, int lane, int max)
{
	struct tpo_proc_snapshot p;
	int kills = 0;
	uint64_t end;

	for (;;) {
		h_proc(st, stage, lane, &p);
		if (p.state == TPO_UNIT_OPEN)
			return kills;
		cr_assert_lt(kills, max, "circuit still closed after %d crashes", kills);
		if (p.state == TPO_UNIT_RUNNING && p.pid > 0 && p.child_pid == p.pid) {
			cr_assert_eq(kill(p.pid, SIGKILL), 0);
			kills++;
			end = h_now_ms() + H_HANG_MS;
			while (!h_pid_gone(p.pid) && h_now_ms() < end)
				h_sleep_ms(1);
			/* Wait for the supervisor to see it. */
			do {
				struct tpo_proc_snapshot q;
				h_proc(st, stage, lane, &q);
				if (q.pid != p.pid)
					break;
				h_sleep_ms(2);
			} while (h_now_ms() < end);
		}
		h_sleep_ms(5);
	}
}

#define CIRCUIT_RESTART \
	"\"restart\": {\"base_ms\": 10, \"cap_ms\": 20, \"jitter_pct\": 0," \
	" \"max_restarts\": 2, \"window_ms\": 60000, \"open_ms\": 2000, \"stable_ms\": 300}"

Test(supervisor, crash_loop_opens_circuit)
{
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char sid0[32], sid1[32];
	int kills, status;
	uint64_t end;

	h_start(&in, "circ",
		"{\"lanes\": 2, " CIRCUIT_RESTART ","
		" \"stages\": {\"rag\": {\"enabled\": true},"
		" \"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 4}}}}");
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	session_for_lane(0, sid0, sizeof(sid0));
	session_for_lane(1, sid1, sizeof(sid1));
	/* Crash lane 1's rag until its circuit opens. */
	kills = crash_until_open(&st, TPO_STAGE_RAG, 1, 6);
	cr_assert_eq(kills, 3, "opened after %d crashes (max_restarts 2)", kills);
	{
		char state[32];
		unsigned restarts;
		status_of("rag", 1, state, &restarts);
		cr_assert_str_eq(state, "open");
		cr_assert_eq(restarts, 2);
	}
	/* Both sessions are served: lane 1's is routed around. */
	cr_assert_eq(chat_lane(sid0, &status), 0);
	cr_assert_eq(status, 200);
	cr_assert_eq(chat_lane(sid1, &status), 0);
	cr_assert_eq(status, 200);
	cr_assert(h_ready(in.port));
	/* After open_ms a probe runs; it survives and the circuit closes. */
	end = h_now_ms() + H_HANG_MS;
	do {
		h_proc(&st, TPO_STAGE_RAG, 1, &p);
		if (p.state == TPO_UNIT_RUNNING)
			break;
		cr_assert(p.state == TPO_UNIT_OPEN || p.state == TPO_UNIT_HALF_OPEN,
			  "state %u", p.state);
		h_sleep_ms(20);
	} while (h_now_ms() < end);
	cr_assert_eq(p.state, TPO_UNIT_RUNNING);
	wait_ready_lane(1);
	cr_assert_eq(chat_lane(sid1, &status), 1);
	cr_assert_eq(status, 200);
	tpo_stats_close(&st);
	h_stop(&in);
}

/*
 * A lane whose infer keeps crashing until its circuit opens: the request
 * held there (in inference, silent, a minute to its deadline) is answered
 * 503 at once, not left to time out; the next probe serves again.
 */
Test(supervisor, lane_out_of_service_ends_its_requests)
{
	struct tpo_stats st;
	struct h_conn held;
	char body[512];

	h_start(&in, "oos",
		"{\"lanes\": 1, " CIRCUIT_RESTART ","
		" \"stages\": {\"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 4}}}}");
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	h_chat_body(body, sizeof(body), "held [[tpo:stall]]", 0, NULL);
	h_begin(&held, in.port, "POST", "/v1/chat/completions", "X-Request-Timeout: 60s\r\n",
		body, strlen(body));
	cr_assert_eq(h_wait_in_flight(&st, TPO_STAGE_INFER, 0, 1), 1, "never in inference");
	cr_assert_eq(crash_until_open(&st, TPO_STAGE_INFER, 0, 6), 3);
	cr_assert_eq(h_read_head(&held), 0, "the held request was left to its deadline");
	cr_assert_eq(held.status, 503, "held: status %d", held.status);
	cr_assert_eq(h_read_body(&held), 0);
	h_assert_oai_error(held.body, "out of service");
	h_conn_free(&held);
	tpo_stats_close(&st);
	h_stop(&in);
}

Test(supervisor, listen_address_in_use_fails_front_without_crash_loop)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	char cfg[256], state[32];
	unsigned restarts;
	uint64_t end;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	/* Someone else holds the port (no SO_REUSEPORT). */
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	snprintf(cfg, sizeof(cfg), "{\"lanes\": 2, \"restart\": {\"base_ms\": 10, \"cap_ms\": 20}}");
	h_launch(&in, "busy", cfg, NULL, ntohs(a.sin_port), 0);
	in.crashes_ok = 1;
	h_stats_attach(&in, &st);
	end = h_now_ms() + H_HANG_MS;
	for (int l = 0; l < 2; l++) {
		do {
			h_proc(&st, TPO_STAGE_STREAM, l, &p);
			if (p.state == TPO_UNIT_FAILED || p.state == TPO_UNIT_OPEN)
				break;
			h_sleep_ms(5);
		} while (h_now_ms() < end);
		cr_assert_eq(p.state, TPO_UNIT_FAILED, "stream[%d]: state %s", l,
			     tpo_unit_state_name((int)p.state));
		cr_assert_eq(p.last_exit_code, 78);
		cr_assert_eq(p.restarts, 0);
	}
	status_of("stream", 0, state, &restarts);
	cr_assert_str_eq(state, "failed");
	tpo_stats_close(&st);
	{
		static char buf[65536];
		cr_assert_gt(h_read_file(in.log, buf, sizeof(buf)), 0);
		cr_assert(strstr(buf, "Address already in use"), "%s", buf);
	}
	in.busy_ok = 1;
	h_stop(&in);
	close(fd);
}

/* Two instances with different names run side by side, each with its own
 * segments, and stopping one leaves the other serving. */
Test(supervisor, two_instances_side_by_side)
{
	static struct h_inst other;
	struct h_conn c;
	char body[512], path[256];

	h_start(&in, "sa", FAST_CFG);
	h_start(&other, "sb", FAST_CFG);
	cr_assert_neq(in.port, other.port);
	for (int k = 0; k < 2; k++) {
		struct h_inst *i = k ? &other : &in;
		h_chat_body(body, sizeof(body), "hello [[tpo:tokens=3]]", 0, NULL);
		h_http(&c, i->port, "POST", "/v1/chat/completions", NULL, body);
		cr_assert_eq(c.status, 200, "instance %s: %d", i->name, c.status);
		h_conn_free(&c);
		snprintf(path, sizeof(path), "/dev/shm/tpo.%s.rings", i->name);
		cr_assert_eq(access(path, F_OK), 0, "%s missing", path);
	}
	h_stop(&other);
	h_chat_body(body, sizeof(body), "still here [[tpo:tokens=3]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	h_stop(&in);
}

/* Writes json as the instance's file and reloads; returns the log once it
 * has more "reload: " lines than nreload. */
static const char *reload_file(const char *json, int nreload)
{
	static char text[16384];
	char out[8192], *p;
	FILE *f;
	size_t n;
	int seen = 0;

	h_write_file(in.cfg, json);
	cr_assert_eq(h_sup(out, sizeof(out), "reload", "--name", in.name, NULL, NULL, NULL), 0,
		     "%s", out);
	for (int i = 0; i < 200; i++) {
		f = fopen(in.log, "r");
		n = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
		if (f)
			fclose(f);
		text[n] = 0;
		seen = 0;
		for (p = text; (p = strstr(p, "reload: ")); p++)
			seen++;
		if (seen > nreload)
			break;
		h_sleep_ms(50);
	}
	cr_assert_gt(seen, nreload, "no reload line in the log:\n%s", text);
	return text;
}

static int count_of(const char *s, const char *what)
{
	int n = 0;

	for (; (s = strstr(s, what)); s++)
		n++;
	return n;
}

#define RELOAD_CFG(more) \
	"{\"lanes\": 2, \"restart\": {\"base_ms\": 20, \"cap_ms\": 50}," \
	" \"stages\": {\"rag\": {\"enabled\": true}," \
	" \"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 8}}}" more "}"

/* SIGHUP (tpo-supervisor reload) re-reads the file: the log says what it
 * applied and what needs a restart, and the instance keeps serving. */
Test(supervisor, reload_applies_restart_params)
{
	struct h_conn c;
	char body[512];
	const char *log;

	h_start(&in, "rl", FAST_CFG);
	/* A restart parameter (base_ms 10 -> 20): applied. */
	log = reload_file(RELOAD_CFG(""), 0);
	cr_assert_eq(count_of(log, "restart and circuit parameters applied"), 1, "%s", log);
	cr_assert_eq(count_of(log, "not applied"), 0, "%s", log);
	/* A setting read at start: said to need a restart, not claimed applied. */
	log = reload_file(RELOAD_CFG(", \"drain_timeout_ms\": 12345"), 1);
	cr_assert_eq(count_of(log, "they are not applied"), 1, "%s", log);
	cr_assert_eq(count_of(log, "restart and circuit parameters applied"), 1, "%s", log);
	/* Back to the file it started with: base_ms 20 -> 10 applied (what runs
	 * is compared, not the file at start), nothing else to say. */
	log = reload_file(FAST_CFG, 2);
	cr_assert_eq(count_of(log, "restart and circuit parameters applied"), 2, "%s", log);
	cr_assert_eq(count_of(log, "they are not applied"), 1, "%s", log);
	cr_assert_eq(count_of(log, "unchanged"), 0, "%s", log);
	h_chat_body(body, sizeof(body), "after reload [[tpo:tokens=2]]", 0, NULL);
	h_http(&c, in.port, "POST", "/v1/chat/completions", NULL, body);
	cr_assert_eq(c.status, 200);
	h_conn_free(&c);
	h_stop(&in);
}

/* A setting the code cannot honour yet is refused, not silently ignored. */
Test(supervisor, unsupported_setting_refused)
{
	char out[4096], cfg[128];

	snprintf(cfg, sizeof(cfg), "/tmp/tpo-it.proc%d.json", (int)getpid());
	h_write_file(cfg, "{\"stages\": {\"infer\": {\"processes\": 2}}}\n");
	cr_assert_eq(h_sup(out, sizeof(out), "check", "-c", cfg, NULL, NULL, NULL), 78, "%s", out);
	cr_assert(strstr(out, "stages.infer.processes"), "%s", out);
	unlink(cfg);
}
