/*
 * test_oldkernel.c — tpo on a kernel without futex_waitv (before Linux
 * 5.16): a stage that finds the call missing sleeps on its doorbell
 * instead (shm/ring.c, tpo_ring_wait), and nothing else changes.
 *
 * The test makes futex_waitv fail with ENOSYS in its own process with a
 * seccomp filter, as an old kernel would; filters are inherited across
 * fork and kept across execve, so the supervisor and every stage it starts
 * run under it (each stage's /proc/PID/status is checked for the filter).
 * Then the whole pipeline must answer, streamed and not, with every stage
 * asleep between requests (each hop a wake-up), and survive a SIGKILL of a
 * stage that sleeps that way.
 */
#include "tests/integration/harness.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/syscall.h>

#define OLD_CFG \
	"{\"lanes\": 1, \"restart\": {\"base_ms\": 10, \"cap_ms\": 50}," \
	" \"stages\": {\"rag\": {\"enabled\": true}," \
	" \"infer\": {\"mock\": {\"tokens_per_second\": 0, \"max_tokens\": 8}}}}"

static struct h_inst in;

TestSuite(oldkernel, .fini = h_cleanup, .timeout = 120);

/* futex_waitv -> ENOSYS for this process and all it starts; 0 or -errno. */
static int deny_futex_waitv(void)
{
#if defined(__x86_64__)
	const uint32_t arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
	const uint32_t arch = AUDIT_ARCH_AARCH64;
#else
	const uint32_t arch = 0;
#endif
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, arch, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_futex_waitv, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { (unsigned short)(sizeof(f) / sizeof(f[0])), f };

	if (!arch)
		return -ENOTSUP;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return -errno;
	return 0;
}

/* The "Seccomp_filters:" count of /proc/PID/status, -1 if unreadable. */
static int filters_of(pid_t pid)
{
	char path[64], buf[4096];
	const char *p;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if (h_read_file(path, buf, sizeof(buf)) <= 0 || !(p = strstr(buf, "Seccomp_filters:")))
		return -1;
	return atoi(p + strlen("Seccomp_filters:"));
}

/*
 * Waits until PID is blocked in a system call it sleeps in when idle (the
 * first field of /proc/PID/syscall: a number while blocked, "running"
 * otherwise) and returns that call's number; -1 if it never is. Not a
 * timing check: an idle stage sleeps, and where it sleeps tells which path
 * its wait took.
 */
static long idle_sleep_call(pid_t pid)
{
	char path[64], buf[256];
	uint64_t end = h_now_ms() + H_HANG_MS;

	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)pid);
	do {
		if (h_read_file(path, buf, sizeof(buf)) > 0 && buf[0] >= '0' && buf[0] <= '9') {
			long nr = strtol(buf, NULL, 10);
			if (nr == SYS_ppoll || nr == SYS_futex_waitv
#ifdef SYS_poll
			    || nr == SYS_poll
#endif
			    )
				return nr;
		}
		h_sleep_ms(5);
	} while (h_now_ms() < end);
	return -1;
}

/* The idle single-input stages (rag, assemble, post) sleep on their
 * doorbell: poll(2), not futex_waitv. */
static void sleep_on_doorbells(void)
{
	static const int stages[] = { TPO_STAGE_RAG, TPO_STAGE_ASSEMBLE, TPO_STAGE_POST };
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES];

	h_stage_pids(&in, pids);
	for (size_t i = 0; i < sizeof(stages) / sizeof(stages[0]); i++) {
		pid_t pid = pids[stages[i] * TPO_MAX_LANES];
		long nr = idle_sleep_call(pid);

		cr_assert_gt(pid, 0);
		cr_assert(nr >= 0 && nr != SYS_futex_waitv,
			  "idle stage %d (pid %d) sleeps in system call %ld, not on its doorbell",
			  stages[i], (int)pid, nr);
	}
}

static void chat_ok(int stream, const char *content, int want_tokens)
{
	struct h_conn c;
	char body[512], text[4096], finish[32], want[64];
	uint64_t end = h_now_ms() + H_HANG_MS;
	int64_t usage;

	h_chat_body(body, sizeof(body), content, stream, NULL);
	for (;;) {
		h_open(&c, in.port, "POST", "/v1/chat/completions", NULL, body, strlen(body));
		if (c.status == 200 && stream)
			break;
		h_read_body(&c);
		/* 503 while a killed stage's unit restarts. */
		if (c.status != 503 || h_now_ms() > end)
			break;
		h_conn_free(&c);
		h_sleep_ms(10);
	}
	cr_assert_eq(c.status, 200, "status %d: %s", c.status, c.body ? c.body : "");
	if (stream) {
		cr_assert_eq(h_read_stream(&c, 1, text, sizeof(text), finish, sizeof(finish), &usage),
			     want_tokens, "streamed chunks of '%s'", content);
		cr_assert_eq(usage, want_tokens);
	} else {
		snprintf(want, sizeof(want), "\"completion_tokens\":%d", want_tokens);
		cr_assert(strstr(c.body, want), "want %s in %s", want, c.body);
	}
	h_conn_free(&c);
}

Test(oldkernel, pipeline_sleeps_on_doorbells_without_futex_waitv)
{
	pid_t pids[TPO_NSTAGES * TPO_MAX_LANES], rag = 0;
	struct tpo_stats st;
	struct tpo_proc_snapshot p;
	int n, err;
	long rc;

	err = deny_futex_waitv();
	if (err == -ENOTSUP)
		cr_skip_test("no seccomp filter for this architecture");
	cr_assert_eq(err, 0, "seccomp: %s", strerror(-err));
	errno = 0;
	rc = syscall(SYS_futex_waitv, NULL, 0u, 0u, NULL, 0);
	cr_assert(rc == -1 && errno == ENOSYS, "futex_waitv still callable: %ld, %s", rc,
		  strerror(errno));

	h_start(&in, "nowaitv", OLD_CFG);
	n = h_stage_pids(&in, pids);
	cr_assert_geq(n, TPO_NSTAGES);
	for (int i = 0; i < TPO_NSTAGES * TPO_MAX_LANES; i++)
		if (pids[i] > 0)
			cr_assert_geq(filters_of(pids[i]), 1,
				      "stage pid %d runs without the filter", (int)pids[i]);

	sleep_on_doorbells();
	/* One at a time: every stage is asleep when a request comes. */
	for (int i = 0; i < 100; i++)
		chat_ok(0, "one at a time [[tpo:tokens=5]]", 5);
	/* Paced tokens: post and the front sleep between tokens. */
	for (int i = 0; i < 3; i++)
		chat_ok(1, "paced [[tpo:tokens=6]] [[tpo:tps=200]]", 6);

	/* A stage killed while asleep on its doorbell comes back on it. */
	h_stats_attach(&in, &st);
	h_proc(&st, TPO_STAGE_RAG, 0, &p);
	rag = p.pid;
	cr_assert_gt(rag, 0);
	cr_assert_eq(kill(rag, SIGKILL), 0);
	in.crashes_ok = 1;
	for (int i = 0; i < 20; i++)
		chat_ok(i & 1, "after the kill [[tpo:tokens=4]]", 4);
	h_proc(&st, TPO_STAGE_RAG, 0, &p);
	cr_assert_geq(p.restarts, 1);
	cr_assert_neq(p.pid, rag);
	cr_assert_geq(filters_of(p.pid), 1);
	sleep_on_doorbells();
	tpo_stats_close(&st);
	h_stop(&in);
}
