/*
 * ring_wake.c — doorbell wake-ups are never lost.
 *
 * Two processes ping-pong one record at a time through two rings; both
 * consumers sleep at once (spin 0), so every hop needs a wake-up. A lost
 * wake-up shows as a wait that sleeps its whole 100 ms timeout and then
 * finds a record committed more than 50 ms before (must never happen), or
 * as a hang (wall-clock limit 60 s: a hang detector, not a performance
 * limit). A checker for the checker: moving the producer's flag check
 * before its store of head loses ~1 wake-up per 1000 round trips here.
 *
 *   ring_wake [-n ROUND_TRIPS]
 *
 * TPO_SANITIZED=1 divides the default by 10. Exit 0 = pass.
 */
#include "shm/ring.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define CAP       4096u
#define MAX_LEN   256u
#define WAIT_MS   100
#define LIMIT_NS  60000000000ull

struct stats {
	uint64_t waits, timeouts;
	uint64_t late;   /* slept the whole timeout though the record was there */
	uint64_t rang;
};

/* Waits for one record on in; counts waits that slept through a timeout. */
static int recv_one(struct tpo_ring *in, int bell, uint64_t want, struct stats *st)
{
	struct tpo_ring *set[1] = { in };
	const struct tpo_rec *h;
	uint64_t t0 = tpo_now_ns();
	int err;

	while ((err = tpo_ring_peek(in, &h)) == -EAGAIN) {
		uint64_t w0 = tpo_now_ns();
		int r;

		st->waits++;
		r = tpo_ring_wait(set, 1, bell, 0, WAIT_MS);
		if (r < 0)
			return r;
		if (tpo_now_ns() - w0 >= (uint64_t)WAIT_MS * 1000000) {
			st->timeouts++;
			/* Committed well before the wait gave up: the bell was
			 * not rung, or rung and not heard. */
			if (r == 1 && tpo_ring_peek(in, &h) == 0 &&
			    h->ts_ns + (uint64_t)WAIT_MS * 1000000 / 2 < tpo_now_ns())
				st->late++;
		}
		if (tpo_now_ns() - t0 > LIMIT_NS)
			return -ETIMEDOUT;
	}
	if (err < 0)
		return err;
	if (h->req_id != want || h->len != 8 || *(const uint64_t *)tpo_rec_data(h) != ~want)
		return -EBADMSG;
	tpo_ring_advance(in, h);
	tpo_ring_release(in);
	return 0;
}

static int send_one(struct tpo_ring *out, uint64_t v, struct stats *st)
{
	struct tpo_rec *h;
	uint64_t payload = ~v;
	int err = tpo_ring_reserve(out, 8, &h);

	if (err < 0)
		return err;   /* one record in flight: never full */
	h->type = TPO_REC_USER;
	h->req_id = v;
	memcpy(tpo_rec_data(h), &payload, 8);
	h->ts_ns = tpo_now_ns();
	st->rang += (uint64_t)tpo_ring_commit(out);
	return 0;
}

/* side 0 starts each round trip, side 1 echoes. */
static int side(int who, uint8_t *mem, int bells[2], uint64_t n, struct stats *st)
{
	size_t fp = tpo_ring_footprint(CAP);
	struct tpo_ring in, out;
	void *in_mem = mem + (size_t)who * fp, *out_mem = mem + (size_t)(1 - who) * fp;
	int err;

	/* Ring k is consumed by side k and sleeps on bells[k]. */
	if ((err = tpo_ring_open_consumer(&in, in_mem, -1)) < 0 ||
	    (err = tpo_ring_open_producer(&out, out_mem, bells[1 - who])) < 0)
		return err;
	for (uint64_t i = 0; i < n; i++) {
		if (who == 0) {
			if ((err = send_one(&out, 2 * i, st)) < 0 ||
			    (err = recv_one(&in, bells[0], 2 * i + 1, st)) < 0)
				return err;
		} else {
			if ((err = recv_one(&in, bells[1], 2 * i, st)) < 0 ||
			    (err = send_one(&out, 2 * i + 1, st)) < 0)
				return err;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *san = getenv("TPO_SANITIZED");
	uint64_t n = 20000, t0, dt;
	size_t fp = tpo_ring_footprint(CAP);
	struct stats a = { 0 }, *b;
	int bells[2], opt, err, status, rc = 1;
	uint8_t *mem;
	pid_t pid;

	if (san && *san && strcmp(san, "0") != 0)
		n /= 10;
	while ((opt = getopt(argc, argv, "n:")) != -1) {
		if (opt != 'n') {
			fprintf(stderr, "usage: ring_wake [-n ROUND_TRIPS]\n");
			return 64;
		}
		n = strtoull(optarg, NULL, 0);
	}
	mem = mmap(NULL, 2 * fp + 4096, PROT_READ | PROT_WRITE,
		   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		perror("ring_wake: mmap");
		return 111;
	}
	b = (struct stats *)(mem + 2 * fp);
	bells[0] = tpo_bell_open();
	bells[1] = tpo_bell_open();
	if (bells[0] < 0 || bells[1] < 0 ||
	    tpo_ring_init(mem, CAP, MAX_LEN, 0, 0) < 0 ||
	    tpo_ring_init(mem + fp, CAP, MAX_LEN, 1, (uint64_t)0 - CAP) < 0) {
		fprintf(stderr, "ring_wake: setup failed\n");
		return 111;
	}
	alarm(90);  /* backstop for the 60 s limit checked in recv_one */
	t0 = tpo_now_ns();
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		perror("ring_wake: fork");
		return 111;
	}
	if (pid == 0) {
		err = side(1, mem, bells, n, b);
		if (err < 0)
			fprintf(stderr, "ring_wake: echo side: %s\n", strerror(-err));
		_exit(err < 0 ? 1 : 0);
	}
	err = side(0, mem, bells, n, &a);
	dt = tpo_now_ns() - t0;
	if (err < 0) {
		fprintf(stderr, "ring_wake: ping side: %s\n", strerror(-err));
		kill(pid, SIGKILL);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		err = err ? err : -ECHILD;
	if (!err && dt > LIMIT_NS)
		err = -ETIMEDOUT;
	if (!err && a.late + b->late > 0) {
		fprintf(stderr, "ring_wake: %" PRIu64 " waits slept their whole timeout "
			"although the record had been committed: lost wake-ups\n",
			a.late + b->late);
		err = -EBADE;
	}
	if (!err)
		rc = 0;
	printf("ring_wake: %" PRIu64 " round trips in %.2f s (%.1f us each), waits %" PRIu64
	       ", bells rung %" PRIu64 ", timeouts %" PRIu64 ", late wake-ups %" PRIu64 ": %s\n",
	       n, (double)dt / 1e9, (double)dt / 1e3 / (double)(n ? n : 1),
	       a.waits + b->waits, a.rang + b->rang, a.timeouts + b->timeouts,
	       a.late + b->late, rc ? "FAIL" : "ok");
	munmap(mem, 2 * fp + 4096);
	return rc;
}
