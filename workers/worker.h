/*
 * worker.h — the interface between the infer stage and a model worker.
 *
 * The infer stage owns jobs (one per request in inference) and the loop; a
 * worker turns a job's prompt into tokens. A worker calls back into the
 * stage through struct tpo_job_sink as tokens arrive; it never touches rings.
 *
 * Which process may call: only the infer process that owns the jobs, from
 * its single thread.
 *
 * Two kinds of worker. A timer-driven one (mock, plugin) only has start,
 * poll and cancel: the stage calls poll() once a job's wake_ns has passed.
 * An event-driven one (the HTTP workers) also has drive() and wait(): the
 * stage calls drive() every loop round to make progress on its sockets, and
 * when it has nothing else to do it sleeps in wait(), which watches the
 * worker's sockets and the stage's input doorbell together.
 *
 * Callbacks: sink->token may be called from inside drive() or poll() (also
 * from inside a transfer callback); sink->done and sink->fail only from
 * start(), poll() or drive() outside any transfer callback, because they end
 * the job and the stage then calls cancel(), which frees the worker's job
 * state. A worker must not touch the job after done() or fail().
 */
#ifndef TPO_WORKER_H
#define TPO_WORKER_H

#include <stddef.h>
#include <stdint.h>

struct tpo_job;

struct tpo_job_sink {
	/* A token's text (any bytes). Returns 0, or -errno to abort the job. */
	int (*token)(struct tpo_job *job, const char *text, size_t len);
	/* The job ended well: finish is enum tpo_finish (proto.h). */
	void (*done)(struct tpo_job *job, int finish);
	/* The job ended with an HTTP status and message for the client. */
	void (*fail)(struct tpo_job *job, int status, const char *msg);
};

struct tpo_job {
	uint64_t req_id;
	const char *prompt;          /* valid until the job ends */
	size_t prompt_len;
	uint32_t max_tokens;         /* 0: the worker's default */
	uint64_t deadline_ns;        /* 0: none */
	uint64_t seed;
	const char *model;
	void *worker_state;          /* the worker's per-job data */
	uint64_t wake_ns;            /* when the worker wants poll() again, 0: not */
	const struct tpo_job_sink *sink;
	void *owner;                 /* the infer stage's per-job data */
	uint64_t session_hash;       /* stable per conversation (endpoint choice) */
	uint32_t flags;              /* TPO_REQF_* of the request (proto.h) */
	uint32_t usage_prompt;       /* token counts the upstream reported, 0: */
	uint32_t usage_completion;   /*   unknown (the stage counts tokens) */
};

struct tpo_worker_ops {
	const char *name;
	/* Starts generating; may emit tokens at once. 0 or -errno. */
	int (*start)(void *w, struct tpo_job *job);
	/* Makes progress on every started job whose wake_ns has passed. */
	void (*poll)(void *w, struct tpo_job *job, uint64_t now_ns);
	/* Stops a job (client gone, deadline) or releases an ended one: no
	 * callbacks afterwards. Called exactly once for every started job. */
	void (*cancel)(void *w, struct tpo_job *job);
	/* Event-driven workers (NULL otherwise): non-blocking progress on every
	 * transfer, delivering callbacks. */
	void (*drive)(void *w, uint64_t now_ns);
	/* Sleeps until a worker socket is ready, bell (an eventfd, -1: none) is
	 * readable, or timeout_ms passes. 0; 1 if it watched bell edge-triggered
	 * (the caller need not drain it: every ring wakes it once); or -errno. */
	int (*wait)(void *w, int bell, int timeout_ms);
	/* Releases the worker (every job cancelled first). */
	void (*destroy)(void *w);
};

struct tpo_config_infer;
struct tpo_stats;

/*
 * Creates the worker stages.infer.worker names: *ops and *w. stats and lane
 * say where endpoint states go (stats may be NULL). On failure returns
 * -errno and writes a message naming the problem into err[0..errcap).
 */
int tpo_worker_create(const struct tpo_config_infer *cfg, struct tpo_stats *stats, int lane,
		      const struct tpo_worker_ops **ops, void **w, char *err, size_t errcap);

/* The native plugin worker (workers/plugin.c, ABI in workers/plugin_abi.h). */
int tpo_plugin_create(const struct tpo_config_infer *cfg, const struct tpo_worker_ops **ops,
		      void **w, char *err, size_t errcap);

/* The built-in mock model worker (workers/mock.c). */
struct tpo_mock_params {
	uint32_t tokens_per_second;  /* 0: as fast as possible */
	uint32_t max_tokens;         /* tokens per answer unless the prompt says */
	int64_t seed;
};

extern const struct tpo_worker_ops tpo_mock_ops;
void *tpo_mock_create(const struct tpo_mock_params *p);
void tpo_mock_destroy(void *w);

#endif
