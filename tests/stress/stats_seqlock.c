/*
 * stats_seqlock.c — a writer rewrites multi-field seqlock groups of the
 * stats segment (a process slot's supervisor part: every field = i; an
 * endpoint's name and url: both spell i) as fast as it can while a reader
 * snapshots them and checks it never sees a mix of two writes.
 *
 *   stats_seqlock [-t | -p] [-s SECONDS]
 *
 * Default: threads (one mapping, for TSan), then processes (two mappings,
 * the writer SIGKILLed at the end and its slot then taken over), each for
 * half of SECONDS (default 1). Exit 0 = pass.
 */
#include "shm/stats.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STAGE TPO_STAGE_INFER
#define LANE  2

static char inst[TPO_NAME_MAX + 1];
static _Atomic int stop;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void write_one(struct tpo_stats *st, uint32_t i, int ep_every)
{
	struct tpo_stats_sup_info v = {
		.pid = (int32_t)i, .state = i % TPO_UNIT_NSTATES, .restarts = i,
		.last_status = (int32_t)i, .last_exit_code = (int32_t)i,
		.last_signal = (int32_t)i, .state_since_ns = 3ull * i,
	};
	char name[64], url[128];

	tpo_stats_sup_set(st, STAGE, LANE, &v);
	if (i % ep_every == 0) {
		/* Lengths vary so a torn copy also shows as a length mismatch. */
		snprintf(name, sizeof(name), "ep-%u-%.*s", i, (int)(i % 40), "#########"
			 "###############################");
		snprintf(url, sizeof(url), "http://h/%s", name);
		tpo_stats_ep_claim(st, LANE, 0, name, url);
	}
}

/* Checks one snapshot of each group; returns -1 on a torn one. */
struct tally {
	uint64_t ok, busy, last;
};

static int check_one(const struct tpo_stats *st, struct tally *t, int ep_slot)
{
	struct tpo_proc_snapshot p;
	struct tpo_ep_snapshot e;
	int err;

	err = tpo_stats_read_proc(st, STAGE, LANE, &p);
	if (err == -EAGAIN) {
		t->busy++;
	} else if (err < 0) {
		fprintf(stderr, "read_proc: %d\n", err);
		return -1;
	} else {
		uint32_t i = (uint32_t)p.pid;
		if (p.restarts != i || (uint32_t)p.last_status != i ||
		    (uint32_t)p.last_exit_code != i || (uint32_t)p.last_signal != i ||
		    p.state_since_ns != 3ull * i || p.state != i % TPO_UNIT_NSTATES) {
			fprintf(stderr, "torn proc snapshot: pid %u restarts %u status %d "
				"code %d sig %d since %" PRIu64 " state %u\n", i, p.restarts,
				p.last_status, p.last_exit_code, p.last_signal,
				p.state_since_ns, p.state);
			return -1;
		}
		if (i < t->last) {
			fprintf(stderr, "went backwards: %u after %" PRIu64 "\n", i, t->last);
			return -1;
		}
		t->last = i;
		t->ok++;
	}
	if (ep_slot < 0)
		return 0;
	err = tpo_stats_read_ep(st, ep_slot, &e);
	if (err == 0 && strcmp(e.url + strlen("http://h/"), e.name) != 0) {
		fprintf(stderr, "torn endpoint snapshot: '%s' vs '%s'\n", e.name, e.url);
		return -1;
	}
	if (err < 0 && err != -EAGAIN) {
		fprintf(stderr, "read_ep: %d\n", err);
		return -1;
	}
	return 0;
}

/* ---- threads: one mapping, both sides visible to TSan ------------------ */

struct targ {
	struct tpo_stats *st;
	uint64_t writes;
};

static void *writer_thread(void *arg)
{
	struct targ *a = arg;
	uint32_t i = 1;

	while (!atomic_load_explicit(&stop, memory_order_relaxed))
		write_one(a->st, i++, 16);
	a->writes = i - 1;
	return NULL;
}

static int run_threads(double secs)
{
	struct tpo_stats st;
	struct targ a;
	struct tally t = { 0 };
	pthread_t th;
	uint64_t end;
	int err, rc = 0, slot;

	err = tpo_stats_create(&st, inst, 4);
	if (err < 0) {
		fprintf(stderr, "stats_seqlock: create: %s\n", tpo_seg_strerror(err));
		return 1;
	}
	write_one(&st, 0, 1);     /* the endpoint slot exists before reading */
	slot = tpo_stats_ep_claim(&st, LANE, 0, "ep-0-", "http://h/ep-0-");
	a.st = &st;
	atomic_store(&stop, 0);
	if (pthread_create(&th, NULL, writer_thread, &a) != 0) {
		rc = 1;
		goto out;
	}
	end = now_ns() + (uint64_t)(secs * 1e9);
	while (now_ns() < end)
		if (check_one(&st, &t, slot) < 0) {
			rc = 1;
			break;
		}
	atomic_store(&stop, 1);
	pthread_join(th, NULL);
	if (!rc && (t.ok == 0 || a.writes == 0)) {
		fprintf(stderr, "no progress: %" PRIu64 " reads, %" PRIu64 " writes\n",
			t.ok, a.writes);
		rc = 1;
	}
	printf("threads: %" PRIu64 " writes, %" PRIu64 " clean reads, %" PRIu64 " busy\n",
	       a.writes, t.ok, t.busy);
out:
	tpo_stats_destroy(&st);
	return rc;
}

/* ---- processes: separate mappings, writer killed mid-stream ------------ */

static int run_procs(double secs)
{
	struct tpo_stats st, rd;
	struct tpo_proc_snapshot p;
	struct tally t = { 0 };
	uint64_t end;
	pid_t pid;
	int err, rc = 0, slot, status;

	err = tpo_stats_create(&st, inst, 4);
	if (err < 0) {
		fprintf(stderr, "stats_seqlock: create: %s\n", tpo_seg_strerror(err));
		return 1;
	}
	write_one(&st, 0, 1);
	slot = tpo_stats_ep_claim(&st, LANE, 0, "ep-0-", "http://h/ep-0-");
	pid = fork();
	if (pid < 0) {
		rc = 1;
		goto out;
	}
	if (pid == 0) {
		struct tpo_stats w;
		if (tpo_stats_attach(&w, inst, 1) < 0)
			_exit(1);
		for (uint32_t i = 1;; i++)
			write_one(&w, i, 16);
	}
	if (tpo_stats_attach(&rd, inst, 0) < 0) {
		rc = 1;
		goto out_kill;
	}
	end = now_ns() + (uint64_t)(secs * 1e9);
	while (now_ns() < end)
		if (check_one(&rd, &t, slot) < 0) {
			rc = 1;
			break;
		}
out_kill:
	/* Killed wherever it is, possibly inside a write. */
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	if (rc)
		goto out_close;
	if (t.ok == 0) {
		fprintf(stderr, "no clean reads\n");
		rc = 1;
		goto out_close;
	}
	/* The replacement writer's first write makes the group readable. */
	write_one(&st, (uint32_t)t.last + 1000, 1);
	if (tpo_stats_ep_claim(&st, LANE, 0, "after", "http://h/after") != slot ||
	    tpo_stats_read_proc(&rd, STAGE, LANE, &p) != 0 ||
	    p.pid != (int32_t)t.last + 1000 ||
	    check_one(&rd, &(struct tally){ 0 }, slot) != 0) {
		fprintf(stderr, "slot not recovered after the writer's death\n");
		rc = 1;
	}
	printf("processes: last write seen %" PRIu64 ", %" PRIu64 " clean reads, %" PRIu64
	       " busy\n", t.last, t.ok, t.busy);
out_close:
	tpo_stats_close(&rd);
out:
	tpo_stats_destroy(&st);
	return rc;
}

int main(int argc, char **argv)
{
	int threads = 1, procs = 1, opt, rc = 0;
	double secs = 1.0;

	while ((opt = getopt(argc, argv, "tps:")) != -1) {
		switch (opt) {
		case 't': procs = 0; break;
		case 'p': threads = 0; break;
		case 's': secs = atof(optarg); break;
		default:
			fprintf(stderr, "usage: stats_seqlock [-t | -p] [-s SECONDS]\n");
			return 64;
		}
	}
	if (secs <= 0)
		secs = 1.0;
	snprintf(inst, sizeof(inst), "sq%d", (int)getpid());
	if (threads && procs)
		secs /= 2;
	if (threads)
		rc |= run_threads(secs);
	if (procs && !rc)
		rc |= run_procs(secs);
	tpo_seg_sweep(inst, 1);
	printf("stats_seqlock: %s\n", rc ? "FAILED" : "ok");
	return rc;
}
