/*
 * test_stats.c — the stats segment (shm/stats.h): create/attach and its
 * refusals, owner liveness, the writers and snapshot readers, seqlock
 * recovery after a writer died mid-update, endpoint slots, merging.
 */
#include "shm/stats.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervisor/config.h"

/* Per-process instance name; a forked child keeps its parent's. */
static const char *inst(void)
{
	static char name[TPO_NAME_MAX + 1];

	if (!name[0])
		snprintf(name, sizeof(name), "tst%d", (int)getpid());
	return name;
}

static void cleanup(void)
{
	tpo_seg_sweep(inst(), 1);
}

TestSuite(stats, .fini = cleanup);

static void create(struct tpo_stats *st, uint32_t nlanes)
{
	cr_assert_eq(tpo_stats_create(st, inst(), nlanes), 0);
	cr_assert_not_null(st->shm);
}

/* A raw read-write mapping of the whole segment file. */
static void *raw_map(size_t *len)
{
	char path[TPO_SEG_PATH_MAX];
	struct stat sb;
	void *p;
	int fd;

	cr_assert_eq(tpo_seg_path(path, sizeof(path), inst(), "stats"), 0);
	fd = shm_open(path, O_RDWR, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(fstat(fd, &sb), 0);
	p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	cr_assert_neq(p, MAP_FAILED);
	*len = (size_t)sb.st_size;
	return p;
}

Test(stats, create_attach_info)
{
	struct tpo_stats st, rd;
	struct tpo_stats_info info;
	int cpus[3] = { 4, 5, 6 };

	create(&st, 3);
	cr_assert_eq(st.seg.size, sizeof(struct tpo_stats_shm));
	cr_assert_eq(st.shm->seg.version, TPO_STATS_VERSION);
	tpo_stats_set_instance(&st, "127.0.0.1:8080", cpus, 3);

	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0);
	cr_assert_eq(rd.seg.writable, 0);
	cr_assert_eq(tpo_stats_read_info(&rd, &info), 0);
	cr_assert_str_eq(info.name, inst());
	cr_assert_str_eq(info.listen, "127.0.0.1:8080");
	cr_assert_eq(info.sup_pid, getpid());
	cr_assert_eq(info.nlanes, 3);
	cr_assert_neq(info.start_ns, 0);
	cr_assert_eq(info.lane_cpu[0], 4);
	cr_assert_eq(info.lane_cpu[2], 6);
	cr_assert_eq(info.lane_cpu[3], -1);
	cr_assert_eq(info.draining, 0);
	tpo_stats_set_draining(&st, 1);
	cr_assert_eq(tpo_stats_read_info(&rd, &info), 0);
	cr_assert_eq(info.draining, 1);
	/* Writers on a read-only mapping do nothing (and do not fault). */
	tpo_stats_count_in(&rd, TPO_STAGE_RAG, 0, 1);
	tpo_stats_service(&rd, TPO_STAGE_RAG, 0, 1000);
	cr_assert_eq(tpo_stats_proc_claim(&rd, TPO_STAGE_RAG, 0), -EINVAL);
	tpo_stats_close(&rd);
	tpo_stats_close(&rd);
	tpo_stats_destroy(&st);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -ENOENT);
}

Test(stats, bad_arguments)
{
	struct tpo_stats st;

	cr_assert_eq(tpo_stats_create(&st, inst(), 0), -EINVAL);
	cr_assert_eq(tpo_stats_create(&st, inst(), TPO_MAX_LANES + 1), -EINVAL);
	cr_assert_eq(tpo_stats_create(&st, "bad/name", 1), -EINVAL);
	cr_assert_eq(tpo_stats_attach(&st, inst(), 0), -ENOENT);
	create(&st, 1);
	cr_assert_eq(tpo_stats_sup_set(&st, TPO_NSTAGES + 1, 0,
				       &(struct tpo_stats_sup_info){ 0 }), -EINVAL);
	cr_assert_eq(tpo_stats_sup_set(&st, 0, TPO_MAX_LANES, &(struct tpo_stats_sup_info){ 0 }),
		     -EINVAL);
	cr_assert_eq(tpo_stats_ring_set(&st, TPO_MAX_RINGS, 0, 0, 0, 1, 0, 64), -EINVAL);
	cr_assert_null(tpo_stats_hist(&st, 0, 0, TPO_STATS_NHIST));
	tpo_stats_destroy(&st);
}

Test(stats, version_refused)
{
	struct tpo_stats st, rd;
	struct tpo_seg_hdr *h;
	size_t len;

	create(&st, 1);
	h = raw_map(&len);
	h->version = TPO_STATS_VERSION + 1;
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -EPROTONOSUPPORT);
	cr_assert_null(rd.shm);
	h->version = 0;
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -EAGAIN, "unpublished");
	munmap(h, len);
	tpo_stats_destroy(&st);
}

Test(stats, foreign_segment_refused)
{
	struct tpo_seg seg;
	struct tpo_stats rd;

	/* A tpo segment of another kind under the stats name. */
	cr_assert_eq(tpo_seg_create(&seg, inst(), "stats", TPO_SEG_TEST, 4096), 0);
	tpo_seg_publish(&seg, TPO_STATS_VERSION);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -EPROTO);
	/* Not a tpo segment at all. */
	memset(seg.base, 0x5a, 64);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -EPROTO);
	tpo_seg_close(&seg);
	cr_assert_eq(tpo_seg_unlink(inst(), "stats"), 0);
}

Test(stats, truncated_refused)
{
	struct tpo_seg seg;
	struct tpo_stats st, rd;
	char path[TPO_SEG_PATH_MAX];
	int fd;

	/* Right kind and version, but smaller than the layout. */
	cr_assert_eq(tpo_seg_create(&seg, inst(), "stats", TPO_SEG_STATS, 8192), 0);
	tpo_seg_publish(&seg, TPO_STATS_VERSION);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -EBADF);
	tpo_seg_close(&seg);
	cr_assert_eq(tpo_seg_unlink(inst(), "stats"), 0);

	/* A real one whose file was cut short. */
	create(&st, 1);
	cr_assert_eq(tpo_seg_path(path, sizeof(path), inst(), "stats"), 0);
	fd = shm_open(path, O_RDWR, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, 65536), 0);
	close(fd);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), -EBADF);
	tpo_stats_close(&st);   /* its pages are gone: do not touch them */
	cr_assert_eq(tpo_seg_unlink(inst(), "stats"), 0);
}

Test(stats, live_owner_not_clobbered)
{
	struct tpo_stats st, again, rd;

	create(&st, 2);
	tpo_stats_count_in(&st, TPO_STAGE_STREAM, 1, 5);
	cr_assert_eq(tpo_stats_create(&again, inst(), 2), -EEXIST);
	/* Destroying after a failed create must not unlink the live one. */
	tpo_stats_destroy(&again);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0);
	cr_assert_eq(rd.shm->proc[tpo_stats_proc_index(TPO_STAGE_STREAM, 1)].child.req_in, 5);
	tpo_stats_close(&rd);
	tpo_stats_destroy(&st);
}

Test(stats, dead_owner_replaced)
{
	struct tpo_stats st, rd;
	struct tpo_proc_snapshot p;
	pid_t pid;
	int status;

	(void)inst();   /* name fixed before the fork: the child uses ours */
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct tpo_stats c;
		if (tpo_stats_create(&c, inst(), 1) < 0)
			_exit(1);
		tpo_stats_count_in(&c, TPO_STAGE_RAG, 0, 9);
		_exit(0);   /* dies owning the segment */
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0, "the dead one was there");
	cr_assert_eq(rd.shm->seg.owner_pid, (uint32_t)pid);
	tpo_stats_close(&rd);

	create(&st, 1);
	cr_assert_eq(st.shm->seg.owner_pid, (uint32_t)getpid());
	cr_assert_eq(tpo_stats_read_proc(&st, TPO_STAGE_RAG, 0, &p), 0);
	cr_assert_eq(p.req_in, 0, "a fresh segment, not the dead one's");
	tpo_stats_destroy(&st);
}

Test(stats, proc_writers_and_snapshot)
{
	struct tpo_stats st, child, rd;
	struct tpo_proc_snapshot p;
	struct tpo_stats_sup_info si = {
		.pid = 1234, .state = TPO_UNIT_BACKOFF, .restarts = 3,
		.last_status = 0x0b, .last_exit_code = -1, .last_signal = 11,
		.state_since_ns = 777,
	};

	create(&st, 2);
	cr_assert_eq(tpo_stats_attach(&child, inst(), 1), 0);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0);

	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_INFER, 1, &p), 0);
	cr_assert_eq(p.stage, TPO_STAGE_INFER);
	cr_assert_eq(p.lane, 1);
	cr_assert_eq(p.state, TPO_UNIT_STOPPED);
	cr_assert_eq(p.last_status, -1);
	cr_assert_eq(p.claims, 0);

	cr_assert_eq(tpo_stats_sup_set(&st, TPO_STAGE_INFER, 1, &si), 0);
	cr_assert_eq(tpo_stats_proc_claim(&child, TPO_STAGE_INFER, 1), 0);
	tpo_stats_count_in(&child, TPO_STAGE_INFER, 1, 10);
	tpo_stats_count_out(&child, TPO_STAGE_INFER, 1, 9);
	tpo_stats_count_shed_reject(&child, TPO_STAGE_INFER, 1, 2);
	tpo_stats_count_shed_drop_oldest(&child, TPO_STAGE_INFER, 1, 3);
	tpo_stats_count_timeout(&child, TPO_STAGE_INFER, 1, 4);
	tpo_stats_count_error(&child, TPO_STAGE_INFER, 1, 5);
	tpo_stats_count_tokens(&child, TPO_STAGE_INFER, 1, 600);
	tpo_stats_inflight_add(&child, TPO_STAGE_INFER, 1, 3);
	tpo_stats_inflight_add(&child, TPO_STAGE_INFER, 1, -1);
	tpo_stats_count_status(&child, TPO_STAGE_INFER, 1, 429);
	tpo_stats_count_status(&child, TPO_STAGE_INFER, 1, 429);
	tpo_stats_count_status(&child, TPO_STAGE_INFER, 1, 418);
	tpo_stats_heartbeat(&child, TPO_STAGE_INFER, 1, 424242);
	tpo_stats_service(&child, TPO_STAGE_INFER, 1, 1000000);
	tpo_stats_queue_wait(&child, TPO_STAGE_INFER, 1, 2000);
	tpo_stats_ttft(&child, TPO_STAGE_INFER, 1, 50000000);

	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_INFER, 1, &p), 0);
	cr_assert_eq(p.pid, 1234);
	cr_assert_eq(p.state, TPO_UNIT_BACKOFF);
	cr_assert_eq(p.restarts, 3);
	cr_assert_eq(p.last_status, 0x0b);
	cr_assert_eq(p.last_exit_code, -1);
	cr_assert_eq(p.last_signal, 11);
	cr_assert_eq(p.state_since_ns, 777);
	cr_assert_eq(p.child_pid, getpid());
	cr_assert_eq(p.claims, 1);
	cr_assert_neq(p.claimed_ns, 0);
	cr_assert_eq(p.heartbeat_ns, 424242);
	cr_assert_eq(tpo_stats_heartbeat_of(&rd, TPO_STAGE_INFER, 1), 424242);
	cr_assert_eq(p.in_flight, 2);
	cr_assert_eq(p.req_in, 10);
	cr_assert_eq(p.req_out, 9);
	cr_assert_eq(p.shed_reject, 2);
	cr_assert_eq(p.shed_drop_oldest, 3);
	cr_assert_eq(p.timeouts, 4);
	cr_assert_eq(p.errors, 5);
	cr_assert_eq(p.tokens, 600);
	cr_assert_eq(p.http[TPO_STATUS_429], 2);
	cr_assert_eq(p.http[TPO_STATUS_OTHER], 1);
	cr_assert_eq(p.http[TPO_STATUS_200], 0);
	cr_assert_eq(tpo_hist_count(tpo_stats_hist(&rd, TPO_STAGE_INFER, 1, TPO_STATS_SERVICE)), 1);
	cr_assert_eq(tpo_hist_max(tpo_stats_hist(&rd, TPO_STAGE_INFER, 1, TPO_STATS_TTFT)),
		     50000000);
	cr_assert_eq(tpo_hist_min(tpo_stats_hist(&rd, TPO_STAGE_INFER, 1, TPO_STATS_QUEUE_WAIT)),
		     2000);
	/* Other slots untouched. */
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_INFER, 0, &p), 0);
	cr_assert_eq(p.req_in, 0);

	/* A replacement child: counters carry on, the gauge restarts. */
	cr_assert_eq(tpo_stats_proc_claim(&child, TPO_STAGE_INFER, 1), 0);
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_INFER, 1, &p), 0);
	cr_assert_eq(p.claims, 2);
	cr_assert_eq(p.req_in, 10);
	cr_assert_eq(p.in_flight, 0);

	/* The supervisor's own slot. */
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STATS_SUPERVISOR, 0, &p), 0);
	cr_assert_eq(p.pid, getpid());
	cr_assert_eq(p.state, TPO_UNIT_RUNNING);
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STATS_SUPERVISOR, 1, &p), -EINVAL);

	tpo_stats_close(&rd);
	tpo_stats_close(&child);
	tpo_stats_destroy(&st);
}

Test(stats, seqlock_writer_death_recovery)
{
	struct tpo_stats st, child, rd;
	struct tpo_proc_snapshot p;
	struct tpo_stats_proc *slot;
	struct tpo_stats_sup_info si = { .pid = 77, .state = TPO_UNIT_RUNNING };

	create(&st, 1);
	cr_assert_eq(tpo_stats_attach(&child, inst(), 1), 0);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0);
	slot = &st.shm->proc[tpo_stats_proc_index(TPO_STAGE_POST, 0)];

	/* A child killed inside its seqlock write. */
	atomic_store(&slot->child.seq, 41);
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_POST, 0, &p), -EAGAIN,
		     "bounded retries, no stall");
	cr_assert_eq(tpo_stats_proc_claim(&child, TPO_STAGE_POST, 0), 0);
	cr_assert_eq(atomic_load(&slot->child.seq) & 1, 0);
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_POST, 0, &p), 0);
	cr_assert_eq(p.child_pid, getpid());

	/* The supervisor part: its next write repairs it. */
	atomic_store(&slot->sup.seq, 9);
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_POST, 0, &p), -EAGAIN);
	cr_assert_eq(tpo_stats_sup_set(&st, TPO_STAGE_POST, 0, &si), 0);
	cr_assert_eq(atomic_load(&slot->sup.seq) & 1, 0);
	cr_assert_eq(tpo_stats_read_proc(&rd, TPO_STAGE_POST, 0, &p), 0);
	cr_assert_eq(p.pid, 77);

	/* The instance header as well. */
	atomic_store(&st.shm->hdr.seq, 3);
	struct tpo_stats_info info;
	cr_assert_eq(tpo_stats_read_info(&rd, &info), -EAGAIN);
	tpo_stats_set_instance(&st, NULL, NULL, 1);
	cr_assert_eq(tpo_stats_read_info(&rd, &info), 0);
	cr_assert_str_eq(info.listen, "");

	tpo_stats_close(&rd);
	tpo_stats_close(&child);
	tpo_stats_destroy(&st);
}

Test(stats, rings)
{
	struct tpo_stats st, rd;
	struct tpo_ring_snapshot r;

	create(&st, 2);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0);
	cr_assert_eq(tpo_stats_read_ring(&rd, 5, &r), -ENOENT);
	cr_assert_eq(tpo_stats_read_ring(&rd, TPO_MAX_RINGS, &r), -EINVAL);
	cr_assert_eq(tpo_stats_ring_set(&st, 5, 5, TPO_STAGE_RAG, 1, TPO_STAGE_ASSEMBLE, 1,
					1u << 20), 0);
	tpo_stats_ring_update(&st, 5, 100, 90, (1ull << 40) + 4096, (1ull << 40) + 1024, 8192);
	cr_assert_eq(tpo_stats_read_ring(&rd, 5, &r), 0);
	cr_assert_eq(r.id, 5);
	cr_assert_eq(r.from_stage, TPO_STAGE_RAG);
	cr_assert_eq(r.from_lane, 1);
	cr_assert_eq(r.to_stage, TPO_STAGE_ASSEMBLE);
	cr_assert_eq(r.to_lane, 1);
	cr_assert_eq(r.capacity, 1u << 20);
	cr_assert_eq(r.enqueued, 100);
	cr_assert_eq(r.dequeued, 90);
	cr_assert_eq(r.depth, 3072);
	cr_assert_eq(r.hwm, 8192);
	/* Positions wrap around 2^64; a tail read past the head is empty. */
	tpo_stats_ring_update(&st, 5, 1, 1, 10, UINT64_MAX - 5, 0);
	cr_assert_eq(tpo_stats_read_ring(&rd, 5, &r), 0);
	cr_assert_eq(r.depth, 16);
	tpo_stats_ring_update(&st, 5, 1, 1, 10, 20, 0);
	cr_assert_eq(tpo_stats_read_ring(&rd, 5, &r), 0);
	cr_assert_eq(r.depth, 0);
	tpo_stats_close(&rd);
	tpo_stats_destroy(&st);
}

Test(stats, endpoints)
{
	struct tpo_stats st, inf, rd;
	struct tpo_ep_snapshot e;
	int a, b, again;

	create(&st, 2);
	cr_assert_eq(tpo_stats_attach(&inf, inst(), 1), 0);
	cr_assert_eq(tpo_stats_attach(&rd, inst(), 0), 0);
	cr_assert_eq(tpo_stats_read_ep(&rd, 0, &e), -ENOENT);
	a = tpo_stats_ep_claim(&inf, 0, 0, "llama", "http://127.0.0.1:8081/v1");
	b = tpo_stats_ep_claim(&inf, 1, 0, "llama", "http://127.0.0.1:8081/v1");
	cr_assert_geq(a, 0);
	cr_assert_geq(b, 0);
	cr_assert_neq(a, b);
	tpo_stats_ep_add(&inf, a, 2, 7, 1);
	cr_assert_eq(tpo_stats_ep_set_state(&inf, a, TPO_EP_OPEN, 99), 0);
	cr_assert_eq(tpo_stats_read_ep(&rd, a, &e), 0);
	cr_assert_str_eq(e.name, "llama");
	cr_assert_str_eq(e.url, "http://127.0.0.1:8081/v1");
	cr_assert_eq(e.lane, 0);
	cr_assert_eq(e.index, 0);
	cr_assert_eq(e.state, TPO_EP_OPEN);
	cr_assert_eq(e.state_since_ns, 99);
	cr_assert_eq(e.in_flight, 2);
	cr_assert_eq(e.requests, 7);
	cr_assert_eq(e.errors, 1);
	/* A restarted infer process takes its slot back, breaker closed. */
	atomic_store(&inf.shm->ep[a].seq, 5);
	again = tpo_stats_ep_claim(&inf, 0, 0, "llama", "http://127.0.0.1:8081/v1");
	cr_assert_eq(again, a);
	cr_assert_eq(tpo_stats_read_ep(&rd, a, &e), 0);
	cr_assert_eq(e.state, TPO_EP_CLOSED);
	cr_assert_eq(e.in_flight, 0);
	cr_assert_eq(e.requests, 7);
	/* Long strings are cut, not overflowed. */
	char longurl[300];
	memset(longurl, 'u', sizeof(longurl) - 1);
	longurl[sizeof(longurl) - 1] = '\0';
	int c = tpo_stats_ep_claim(&inf, 0, 1, "x", longurl);
	cr_assert_geq(c, 0);
	cr_assert_eq(tpo_stats_read_ep(&rd, c, &e), 0);
	cr_assert_eq(strlen(e.url), TPO_STATS_EP_URL_LEN - 1);
	/* Full. */
	for (int k = 2; k < TPO_MAX_ENDPOINTS - 1; k++)
		cr_assert_geq(tpo_stats_ep_claim(&inf, 1, k, "n", "u"), 0);
	cr_assert_eq(tpo_stats_ep_claim(&inf, 1, 99, "n", "u"), -ENOSPC);
	cr_assert_eq(tpo_stats_ep_claim(&inf, 0, 0, "llama", "u"), a, "still its own");
	tpo_stats_close(&rd);
	tpo_stats_close(&inf);
	tpo_stats_destroy(&st);
}

Test(stats, merge_stage_hist)
{
	struct tpo_stats st;
	struct tpo_hist *m = calloc(1, sizeof(*m));

	cr_assert_not_null(m);
	create(&st, 3);
	for (int l = 0; l < 3; l++)
		for (int k = 0; k < 100; k++)
			tpo_stats_service(&st, TPO_STAGE_RAG, l, 1000 * (uint64_t)(l + 1));
	tpo_stats_service(&st, TPO_STAGE_ASSEMBLE, 0, 5);
	cr_assert_eq(tpo_stats_merge_hist(&st, TPO_STAGE_RAG, TPO_STATS_SERVICE, m), 0);
	cr_assert_eq(tpo_hist_count(m), 300);
	cr_assert_eq(tpo_hist_min(m), 1000);
	cr_assert_eq(tpo_hist_max(m), 3000);
	cr_assert_eq(tpo_hist_bucket_of(tpo_hist_quantile(m, 0.5)), tpo_hist_bucket_of(2000));
	cr_assert_eq(tpo_stats_merge_hist(&st, 7, TPO_STATS_SERVICE, m), -EINVAL);
	tpo_stats_destroy(&st);
	free(m);
}

Test(stats, names)
{
	cr_assert_str_eq(tpo_stats_stage_name(TPO_STAGE_STREAM), "stream");
	cr_assert_str_eq(tpo_stats_stage_name(TPO_STAGE_ASSEMBLE), "assemble");
	cr_assert_str_eq(tpo_stats_stage_name(TPO_STAGE_POST), "post");
	cr_assert_str_eq(tpo_stats_stage_name(TPO_STATS_SUPERVISOR), "supervisor");
	cr_assert_str_eq(tpo_unit_state_name(TPO_UNIT_HALF_OPEN), "half-open");
	cr_assert_str_eq(tpo_unit_state_name(TPO_UNIT_FAILED), "failed");
	cr_assert_str_eq(tpo_unit_state_name(99), "?");
	cr_assert_str_eq(tpo_ep_state_name(TPO_EP_HALF_OPEN), "half-open");
	cr_assert_eq(tpo_stats_status_class(200), TPO_STATUS_200);
	cr_assert_eq(tpo_stats_status_class(504), TPO_STATUS_504);
	cr_assert_eq(tpo_stats_status_class(431), TPO_STATUS_431);
	cr_assert_eq(tpo_stats_status_class(201), TPO_STATUS_OTHER);
	cr_assert_eq(tpo_stats_status_class(-1), TPO_STATUS_OTHER);
	for (int k = 0; k < TPO_STATUS_OTHER; k++)
		cr_assert_eq(tpo_stats_status_class(tpo_stats_status_code(k)), k);
	cr_assert_eq(tpo_stats_status_code(TPO_STATUS_OTHER), 0);
}
