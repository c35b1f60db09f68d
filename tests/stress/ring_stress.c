/*
 * ring_stress.c — millions of variable-length records through one ring
 * between two processes (and, for TSan, two threads), every record checked
 * for order, loss, duplication and payload integrity.
 *
 *   ring_stress [-n RECORDS] [-p | -t]
 *
 * Default: RECORDS = 10M, half through the process variant with spin 0,
 * half with spin 20 us, then a tenth through the threaded
 * variant. -p processes only, -t threads only. TPO_SANITIZED=1 in the
 * environment divides the default counts by 10. Exit 0 = pass.
 */
#include "shm/ring.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define CAP      (1u << 20)
#define MAX_LEN  65536u
#define WAIT_MS  100

struct run {
	void    *mem;
	uint64_t count;
	uint64_t spin_ns;
	int      bell_cons;   /* rung by the producer */
	int      bell_prod;   /* rung by the consumer */
	/* results */
	uint64_t rang, waits, bytes;
	int      err;
};

static uint64_t rnd(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static uint32_t rec_len(uint64_t *s)
{
	uint64_t r = rnd(s);

	if (r % 4096 == 0)
		return MAX_LEN - (uint32_t)(r >> 40) % 64;   /* at or near max */
	if (r % 64 == 1)
		return 257 + (uint32_t)((r >> 20) % 8192);
	return 1 + (uint32_t)((r >> 20) % 256);
}

/* FNV-1a over the payload, 32 bits. */
static uint32_t csum(const uint8_t *p, uint32_t n)
{
	uint32_t h = 2166136261u;

	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

static void fill(uint8_t *p, uint32_t n, uint64_t seq)
{
	uint64_t s = seq * 0x9e3779b97f4a7c15ull | 1;
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8) {
		uint64_t v = rnd(&s);
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] = (uint8_t)rnd(&s);
}

static void producer(struct run *run)
{
	struct tpo_ring r;
	/* ls drives record lengths (the consumer replays it), bs batches. */
	uint64_t ls = 12345, bs = 777, seq = 0;
	uint32_t len = rec_len(&ls);
	int pending = 0, batch = 1;

	run->err = tpo_ring_open_producer(&r, run->mem, run->bell_cons);
	if (run->err < 0)
		return;
	while (seq < run->count) {
		struct tpo_rec *h;
		int err = tpo_ring_reserve(&r, len, &h);

		if (err == -EAGAIN) {
			/* The consumer cannot see what is not committed. */
			if (pending) {
				run->rang += (uint64_t)tpo_ring_commit(&r);
				pending = 0;
			}
			run->waits++;
			err = tpo_ring_wait_space(&r, len, run->bell_prod,
						  run->spin_ns, WAIT_MS);
			if (err < 0) {
				run->err = err;
				return;
			}
			continue;
		}
		if (err < 0) {
			run->err = err;
			return;
		}
		h->type = (uint16_t)(TPO_REC_USER + seq % 5);
		h->req_id = seq;
		h->seq = (uint32_t)seq;
		fill(tpo_rec_data(h), len, seq);
		h->aux = csum(tpo_rec_data(h), len);
		seq++;
		len = rec_len(&ls);
		if (++pending >= batch) {
			run->rang += (uint64_t)tpo_ring_commit(&r);
			pending = 0;
			batch = 1 + (int)(rnd(&bs) % 8);
		}
	}
	if (pending)
		run->rang += (uint64_t)tpo_ring_commit(&r);
}

static void consumer(struct run *run)
{
	struct tpo_ring r, *set[1] = { &r };
	const struct tpo_rec *v[64];
	uint64_t s = 12345, seq = 0;

	run->err = tpo_ring_open_consumer(&r, run->mem, run->bell_prod);
	if (run->err < 0)
		return;
	while (seq < run->count) {
		int n = tpo_ring_peek_batch(&r, v, 64);

		if (n < 0) {
			fprintf(stderr, "ring_stress: corrupt ring at seq %" PRIu64 ": %s\n",
				seq, strerror(-n));
			run->err = n;
			return;
		}
		if (n == 0) {
			run->waits++;
			n = tpo_ring_wait(set, 1, run->bell_cons, run->spin_ns, WAIT_MS);
			if (n < 0) {
				run->err = n;
				return;
			}
			continue;
		}
		for (int i = 0; i < n; i++) {
			const struct tpo_rec *h = v[i];
			uint32_t want = rec_len(&s);

			if (h->req_id != seq || h->seq != (uint32_t)seq ||
			    h->type != TPO_REC_USER + seq % 5 || h->len != want ||
			    h->aux != csum(tpo_rec_data(h), h->len)) {
				fprintf(stderr, "ring_stress: record %" PRIu64 " bad: "
					"req_id %" PRIu64 " len %u (want %u) type %u csum %s\n",
					seq, h->req_id, h->len, want, h->type,
					h->aux == csum(tpo_rec_data(h), h->len) ? "ok" : "BAD");
				run->err = -EBADMSG;
				return;
			}
			run->bytes += h->len;
			seq++;
		}
		run->rang += (uint64_t)tpo_ring_release(&r);
	}
	/* Nothing may follow the last record. */
	if (tpo_ring_peek_batch(&r, v, 1) != 0) {
		fprintf(stderr, "ring_stress: extra record after %" PRIu64 "\n", seq);
		run->err = -EBADMSG;
	}
}

static void *thread_producer(void *arg)
{
	producer(arg);
	return NULL;
}

static int run_threads(struct run *pr, struct run *cr)
{
	pthread_t t;

	if (pthread_create(&t, NULL, thread_producer, pr) != 0)
		return -EAGAIN;
	consumer(cr);
	if (cr->err < 0) {
		fprintf(stderr, "ring_stress: consumer failed, abort\n");
		_exit(1);
	}
	pthread_join(t, NULL);
	return pr->err < 0 ? pr->err : cr->err;
}

static int run_procs(struct run *pr, struct run *cr)
{
	pid_t pid;
	int st;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		producer(pr);
		if (pr->err < 0)
			fprintf(stderr, "ring_stress: producer: %s\n", strerror(-pr->err));
		_exit(pr->err < 0 ? 1 : 0);
	}
	consumer(cr);
	if (cr->err < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		return cr->err;
	}
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return -ECHILD;
	return 0;
}

static int one(const char *what, int threads, uint64_t count, uint64_t spin_ns)
{
	size_t fp = tpo_ring_footprint(CAP);
	void *mem = mmap(NULL, fp, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct run pr = { 0 }, cr = { 0 };
	struct tpo_ring_shm *shm = mem;
	uint64_t t0, t1;
	int err;

	if (mem == MAP_FAILED)
		return -errno;
	err = tpo_ring_init(mem, CAP, MAX_LEN, 0, (uint64_t)0 - 3ull * CAP + 8);  /* crosses 2^64 early */
	if (err < 0)
		goto out;
	pr.mem = cr.mem = mem;
	pr.count = cr.count = count;
	pr.spin_ns = cr.spin_ns = spin_ns;
	pr.bell_cons = cr.bell_cons = tpo_bell_open();
	pr.bell_prod = cr.bell_prod = tpo_bell_open();
	if (pr.bell_cons < 0 || pr.bell_prod < 0) {
		err = -EMFILE;
		goto out;
	}
	t0 = tpo_now_ns();
	err = threads ? run_threads(&pr, &cr) : run_procs(&pr, &cr);
	t1 = tpo_now_ns();
	if (err == 0 && (atomic_load(&shm->prod_records) != count ||
			 atomic_load(&shm->cons_records) != count ||
			 atomic_load(&shm->head) != atomic_load(&shm->tail))) {
		fprintf(stderr, "ring_stress: %s: counters off: prod %" PRIu64 " cons %" PRIu64 "\n",
			what, (uint64_t)atomic_load(&shm->prod_records),
			(uint64_t)atomic_load(&shm->cons_records));
		err = -EBADMSG;
	}
	printf("ring_stress: %s spin=%" PRIu64 "ns: %" PRIu64 " records, %.1f MB, %.2f s, "
	       "%.2f M rec/s, consumer waits %" PRIu64 ", wake-ups sent by consumer %" PRIu64
	       ", hwm %" PRIu64 " B: %s\n",
	       what, spin_ns, count, (double)cr.bytes / 1e6, (double)(t1 - t0) / 1e9,
	       (double)count * 1e3 / (double)(t1 - t0), cr.waits, cr.rang,
	       (uint64_t)atomic_load(&shm->hwm), err ? strerror(-err) : "ok");
	close(pr.bell_cons);
	close(pr.bell_prod);
out:
	if (err < 0)
		fprintf(stderr, "ring_stress: %s: %s\n", what, strerror(-err));
	munmap(mem, fp);
	return err;
}

int main(int argc, char **argv)
{
	const char *san = getenv("TPO_SANITIZED");
	uint64_t n = 10000000;
	int mode = 0, opt, fails = 0, runs = 0;

	if (san && *san && strcmp(san, "0") != 0)
		n /= 10;
	while ((opt = getopt(argc, argv, "n:pt")) != -1) {
		switch (opt) {
		case 'n': n = strtoull(optarg, NULL, 0); break;
		case 'p': mode = 'p'; break;
		case 't': mode = 't'; break;
		default:
			fprintf(stderr, "usage: ring_stress [-n RECORDS] [-p | -t]\n");
			return 64;
		}
	}
	alarm(300);  /* a hang is a failure, not a stuck test run */
	if (mode != 't') {
		fails += one("processes", 0, n / 2, 0) != 0;
		fails += one("processes", 0, n / 2, 20000) != 0;
		runs += 2;
	}
	if (mode != 'p') {
		fails += one("threads", 1, mode == 't' ? n : n / 10, 0) != 0;
		runs++;
	}
	printf("ring_stress: %d runs, %d failed, %" PRIu64 " records in all\n",
	       runs, fails, mode == 't' ? n : n + n / 10);
	return fails ? 1 : 0;
}
