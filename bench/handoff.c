/*
 * handoff.c — what one hop of a lane costs this machine's kernel: a token
 * passed round a ring of N sleepers pinned to one CPU, each woken by the one
 * before it (FUTEX_WAKE on a shared word) and going back to sleep
 * (FUTEX_WAIT) once it has woken the next: the system calls and context
 * switches of a request going through a lane's stages when every stage
 * sleeps between requests, without the stages' own work.
 *
 *   handoff [-r RUNS] [-n HOPS] [-j JSON] [-m MARKDOWN]
 *
 * Three rings: 5 processes (a lane's five stages), 2 processes, 5 threads
 * of one process. Processes switch address spaces at every hop, threads do
 * not: the difference is what the switch of page tables costs here (large
 * on a guest without PCID, or whose hypervisor shadows page tables). Each
 * figure is the median of RUNS runs of HOPS hops.
 */
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MEMBERS_MAX 8

struct word {
	_Atomic uint32_t v;
	char pad[60];
};

static struct word *words;
static int members;
static long rounds;

static void pin(int cpu)
{
	cpu_set_t s;

	CPU_ZERO(&s);
	CPU_SET(cpu, &s);
	sched_setaffinity(0, sizeof(s), &s);
}

static void member(int i)
{
	struct word *me = &words[i], *next = &words[(i + 1) % members];

	for (long k = 0; k < rounds; k++) {
		while (atomic_load_explicit(&me->v, memory_order_acquire) == 0)
			syscall(SYS_futex, &me->v, FUTEX_WAIT, 0, NULL, NULL, 0);
		atomic_store_explicit(&me->v, 0, memory_order_relaxed);
		atomic_store_explicit(&next->v, 1, memory_order_release);
		syscall(SYS_futex, &next->v, FUTEX_WAKE, 1, NULL, NULL, 0);
	}
}

static void *thread_main(void *arg)
{
	pin(0);
	member((int)(intptr_t)arg);
	return NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One run: ns per hop, or -1. */
static double run(int n, int threads, long hops)
{
	pthread_t t[MEMBERS_MAX];
	pid_t pid[MEMBERS_MAX];
	uint64_t t0;
	int ok = 1;

	members = n;
	rounds = hops / n;
	memset(words, 0, sizeof(*words) * MEMBERS_MAX);
	pin(0);
	for (int i = 1; i < n; i++) {
		if (threads) {
			if (pthread_create(&t[i], NULL, thread_main, (void *)(intptr_t)i) != 0)
				return -1;
			continue;
		}
		pid[i] = fork();
		if (pid[i] < 0)
			return -1;
		if (pid[i] == 0) {
			member(i);
			_exit(0);
		}
	}
	t0 = now_ns();
	atomic_store(&words[0].v, 1);
	member(0);
	for (int i = 1; i < n; i++) {
		int st;
		if (threads)
			pthread_join(t[i], NULL);
		else if (waitpid(pid[i], &st, 0) != pid[i] || !WIFEXITED(st) || WEXITSTATUS(st))
			ok = 0;
	}
	return ok ? (double)(now_ns() - t0) / (double)(rounds * n) : -1;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	static const struct { const char *name; int n, threads; } rings[] = {
		{ "5 processes (a lane)", 5, 0 }, { "2 processes", 2, 0 }, { "5 threads", 5, 1 },
	};
	enum { NR = sizeof(rings) / sizeof(rings[0]) };
	const char *json = NULL, *md = NULL;
	double med[NR], v[64];
	long hops = 50000;
	int runs = 5, o;
	FILE *f;

	while ((o = getopt(argc, argv, "r:n:j:m:")) != -1) {
		switch (o) {
		case 'r': runs = atoi(optarg); break;
		case 'n': hops = atol(optarg); break;
		case 'j': json = optarg; break;
		case 'm': md = optarg; break;
		default:
			fprintf(stderr, "usage: handoff [-r RUNS] [-n HOPS] [-j JSON] [-m MARKDOWN]\n");
			return 64;
		}
	}
	if (runs < 1 || runs > 64 || hops < 100) {
		fprintf(stderr, "handoff: RUNS 1..64, HOPS >= 100\n");
		return 64;
	}
	words = mmap(NULL, sizeof(*words) * MEMBERS_MAX, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (words == MAP_FAILED) {
		perror("handoff: mmap");
		return 111;
	}
	printf("hop: wake the next sleeper on the same CPU and sleep; median of %d runs of %ld hops\n",
	       runs, hops);
	for (int k = 0; k < NR; k++) {
		for (int i = 0; i < runs; i++) {
			v[i] = run(rings[k].n, rings[k].threads, hops);
			if (v[i] < 0) {
				fprintf(stderr, "handoff: %s: a member failed\n", rings[k].name);
				return 1;
			}
		}
		qsort(v, (size_t)runs, sizeof(v[0]), cmp);
		med[k] = v[runs / 2];
		printf("  %-22s %7.2f us per hop\n", rings[k].name, med[k] / 1000);
	}
	printf("  the switch of address space: %.2f us per hop (5 processes - 5 threads)\n",
	       (med[0] - med[2]) / 1000);
	if (json && (f = fopen(json, "w"))) {
		fprintf(f, "{\"runs\": %d, \"hops\": %ld, \"us_per_hop\": {\"processes5\": %.3f, "
			"\"processes2\": %.3f, \"threads5\": %.3f}, \"address_space_switch_us\": %.3f}\n",
			runs, hops, med[0] / 1000, med[1] / 1000, med[2] / 1000, (med[0] - med[2]) / 1000);
		fclose(f);
	}
	if (md && (f = fopen(md, "w"))) {
		fprintf(f, "# One hop of a lane (bench/handoff)\n\n"
			"A token passed round N sleepers pinned to one CPU: each wakes the next "
			"(`FUTEX_WAKE`) and sleeps (`FUTEX_WAIT`), the kernel's part of a request "
			"going through a lane's stages when each sleeps between requests. Median of "
			"%d runs of %ld hops.\n\n| ring | µs per hop |\n|---|---:|\n", runs, hops);
		for (int k = 0; k < NR; k++)
			fprintf(f, "| %s | %.2f |\n", rings[k].name, med[k] / 1000);
		fprintf(f, "\nThe switch of address space costs %.2f µs per hop here (5 processes "
			"against 5 threads). A non-streamed request wakes the five stages seven "
			"times (the front and tpo-infer twice).\n", (med[0] - med[2]) / 1000);
		fclose(f);
	}
	return 0;
}
