/*
 * config.h — the pipeline configuration: one JSON file (docs/config.md),
 * parsed with jsmn into a fixed-size struct with no heap pointers, so it can
 * be copied, compared with memcmp and embedded in other structs.
 *
 * Every key is optional; a missing key takes its default. An unknown key, a
 * duplicate key, a value of the wrong type or out of range, invalid JSON, a
 * top level that is not an object, or an empty file is an error, reported as
 *
 *     <file>: <json.path>: <what was expected> at <line>:<col>
 *
 * e.g. "pipeline.json: stages.infer.timeouts.idle_ms: expected a positive
 * integer at 14:23". Line and column are 1-based and name the first
 * character of the offending value (of the key, for "unknown key" and
 * "duplicate key"); columns count UTF-8 characters. Parsing goes on after an
 * error so that one run reports every problem (up to TPO_CONFIG_ERRORS_MAX).
 * Callers exit 78 (EX_CONFIG) on any error: there are no silent defaults.
 *
 * Any process may call these functions; they keep no state.
 */
#ifndef TPO_CONFIG_H
#define TPO_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "supervisor/fsm.h"
#include "supervisor/topology.h"

#define TPO_CONFIG_EX_CONFIG     78           /* sysexits EX_CONFIG */
#define TPO_CONFIG_FILE_MAX      (16u << 20)  /* larger files are refused */

/* Buffer sizes, terminating NUL included. */
#define TPO_CONFIG_NAME_LEN      33    /* instance name, 1..32 of [A-Za-z0-9_-] */
#define TPO_CONFIG_LISTEN_LEN    272   /* "HOST:PORT" as written */
#define TPO_CONFIG_HOST_LEN      256   /* host part, IPv6 brackets removed */
#define TPO_CONFIG_MODELS_MAX    8
#define TPO_CONFIG_MODEL_LEN     64    /* 1..63 bytes */
#define TPO_CONFIG_ENV_LEN       128   /* environment variable name */
#define TPO_CONFIG_PATH_LEN      256   /* file paths */
#define TPO_CONFIG_URL_LEN       256
#define TPO_CONFIG_OPTIONS_LEN   1024  /* stages.infer.plugin.options */
#define TPO_CONFIG_TEMPLATE_LEN  4096  /* stages.assemble.template */
#define TPO_CONFIG_ENDPOINTS_MAX 8
#define TPO_CONFIG_STOP_MAX      8
#define TPO_CONFIG_STOP_LEN      65    /* 1..64 bytes */
#define TPO_CONFIG_REDACT_MAX    8
#define TPO_CONFIG_REDACT_LEN    129   /* 1..128 bytes */

#define TPO_CONFIG_DUMP_MAX      (128u * 1024)  /* longest tpo_config_dump() output */

#define TPO_CONFIG_ERRORS_MAX    32
#define TPO_CONFIG_ERROR_LEN     320

/* "spin_ns": "auto" — the supervisor picks the spin time before sleeping. */
#define TPO_CONFIG_SPIN_AUTO     (-1)

enum tpo_config_policy {
	TPO_POLICY_REJECT_NEW  = 0,   /* 429 + Retry-After */
	TPO_POLICY_DROP_OLDEST = 1,   /* oldest request not yet in inference gets 503 */
};

/* "sched": the scheduling policy of the stage processes (sched(7)). */
enum tpo_config_sched {
	TPO_SCHED_BATCH  = 0,   /* SCHED_BATCH: a woken stage never preempts its waker */
	TPO_SCHED_NORMAL = 1,   /* SCHED_OTHER */
};

enum tpo_config_worker {
	TPO_WORKER_MOCK      = 0,
	TPO_WORKER_OPENAI    = 1,
	TPO_WORKER_LLAMACPP  = 2,
	TPO_WORKER_TGI       = 3,
	TPO_WORKER_ANTHROPIC = 4,
	TPO_WORKER_PLUGIN    = 5,
};

enum tpo_config_balance {
	TPO_BALANCE_LEAST_INFLIGHT = 0,
	TPO_BALANCE_SESSION_HASH   = 1,
};

/* Empty strings below mean JSON null / "not set". */
struct tpo_config_endpoint {
	char     url[TPO_CONFIG_URL_LEN];          /* http:// or https:// */
	char     api_key_env[TPO_CONFIG_ENV_LEN];  /* "" = no key */
	char     model[TPO_CONFIG_MODEL_LEN];      /* "" = the request's model */
	uint32_t weight;                           /* 1..100 */
};

struct tpo_config_rings {
	uint64_t capacity;     /* bytes, power of two */
	uint32_t max_record;   /* largest record payload, bytes */
};

struct tpo_config_admission {
	uint32_t max_inflight_per_lane;
	int      policy;               /* enum tpo_config_policy */
	uint32_t retry_after_s;
	uint32_t request_timeout_ms;
	uint32_t max_body_bytes;
	uint32_t max_header_bytes;
	uint32_t max_headers;
	uint32_t header_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t max_connections;
};

struct tpo_config_restart {
	struct tpo_fsm_params fsm;     /* restart.* except quarantine_after */
	uint32_t quarantine_after;     /* worker crashes before a request is quarantined */
};

struct tpo_config_stream {
	uint64_t ring_capacity;        /* 0 = rings.capacity (same in every stage) */
};

/* "stages.rag.enabled": whether each lane runs a rag process. */
enum tpo_config_rag_enabled {
	TPO_RAG_AUTO = 0,              /* when context_file is set */
	TPO_RAG_ON   = 1,
	TPO_RAG_OFF  = 2,
};

struct tpo_config_rag {
	uint64_t ring_capacity;
	uint32_t enabled;              /* enum tpo_config_rag_enabled */
	char     context_file[TPO_CONFIG_PATH_LEN];   /* "" = none */
	uint32_t max_context_bytes;
};

struct tpo_config_assemble {
	uint64_t ring_capacity;
	char     template[TPO_CONFIG_TEMPLATE_LEN];   /* placeholders {context}, {messages} */
	uint32_t max_prompt_bytes;
};

struct tpo_config_mock {
	uint32_t tokens_per_second;    /* 0 = unlimited */
	uint32_t max_tokens;
	int64_t  seed;
};

struct tpo_config_timeouts {
	uint32_t connect_ms, first_token_ms, idle_ms, total_ms;
};

struct tpo_config_retries {
	uint32_t max_attempts, base_ms, cap_ms;
};

struct tpo_config_breaker {
	uint32_t failures, open_ms;
};

struct tpo_config_plugin {
	char path[TPO_CONFIG_PATH_LEN];        /* "" = none */
	char options[TPO_CONFIG_OPTIONS_LEN];  /* "" = none */
};

struct tpo_config_infer {
	uint64_t ring_capacity;
	uint32_t processes;            /* per lane, 1..8 */
	int      worker;               /* enum tpo_config_worker */
	uint32_t max_inflight;         /* per process */
	struct tpo_config_mock     mock;
	struct tpo_config_timeouts timeouts;
	struct tpo_config_retries  retries;
	int      nendpoints;
	struct tpo_config_endpoint endpoints[TPO_CONFIG_ENDPOINTS_MAX];
	int      balance;              /* enum tpo_config_balance */
	struct tpo_config_breaker  breaker;
	struct tpo_config_plugin   plugin;
};

struct tpo_config_post {
	uint64_t ring_capacity;
	int      nstop;
	char     stop[TPO_CONFIG_STOP_MAX][TPO_CONFIG_STOP_LEN];
	uint32_t max_tokens;
	int      nredact;
	char     redact[TPO_CONFIG_REDACT_MAX][TPO_CONFIG_REDACT_LEN];
};

struct tpo_config_stages {
	struct tpo_config_stream   stream;
	struct tpo_config_rag      rag;
	struct tpo_config_assemble assemble;
	struct tpo_config_infer    infer;
	struct tpo_config_post     post;
};

struct tpo_config {
	char     name[TPO_CONFIG_NAME_LEN];
	char     listen[TPO_CONFIG_LISTEN_LEN];          /* as written */
	char     listen_host[TPO_CONFIG_HOST_LEN];       /* "127.0.0.1", "localhost", "::1" */
	uint16_t listen_port;
	uint8_t  listen_cli;           /* listen came from --listen, not the file */
	struct tpo_lanes_spec lanes;
	int64_t  spin_ns;              /* TPO_CONFIG_SPIN_AUTO or 0..10000000 */
	int      sched;                /* enum tpo_config_sched */
	uint32_t drain_timeout_ms;
	int      log_level;            /* syslog priority: LOG_DEBUG .. LOG_ERR */
	int      nmodels;
	char     models[TPO_CONFIG_MODELS_MAX][TPO_CONFIG_MODEL_LEN];
	struct tpo_config_rings     rings;
	struct tpo_config_admission admission;
	char     auth_api_keys_env[TPO_CONFIG_ENV_LEN];  /* auth.api_keys_env; "" = no auth */
	struct tpo_config_restart   restart;
	struct tpo_config_stages    stages;
};

struct tpo_config_errors {
	int  n;                        /* messages in msg[] */
	int  dropped;                  /* further errors not stored */
	char msg[TPO_CONFIG_ERRORS_MAX][TPO_CONFIG_ERROR_LEN];
};

/*
 * Zeroes c (padding and unused string bytes included, so two configs with
 * the same values compare equal with memcmp) and fills every default.
 * Returns 0.
 */
int tpo_config_defaults(struct tpo_config *c);

/*
 * Parses json[0..len) (need not be NUL-terminated) over the defaults. file
 * names the source in messages (NULL: "<config>"). Returns 0, or -EINVAL
 * with every problem in errs (reset first; may be NULL). On error *c holds
 * defaults partly overwritten: do not use it.
 */
int tpo_config_parse(struct tpo_config *c, const char *json, size_t len,
		     const char *file, struct tpo_config_errors *errs);

/*
 * Reads path (at most TPO_CONFIG_FILE_MAX bytes) and parses it. Returns 0,
 * -EINVAL as tpo_config_parse, or -errno when the file cannot be read (the
 * message, with strerror, is in errs).
 */
int tpo_config_load(struct tpo_config *c, const char *path, struct tpo_config_errors *errs);

/*
 * The instance name a file gives, read even when the file does not load
 * (edited since its instance started): its top-level "name", "default"
 * without one. 0, or -EINVAL (not JSON, not an object, a "name" that is not
 * a valid instance name), -errno of opening or reading it. For the commands
 * that only need to find a running instance.
 */
int tpo_config_name_of(const char *path, char *name, size_t cap);

/* Releases nothing today (the struct owns no memory); call it anyway. */
void tpo_config_free(struct tpo_config *c);

/* Prints "prog: config: <msg>\n" per error, then a count of dropped ones. */
void tpo_config_errors_print(const struct tpo_config_errors *e, FILE *f, const char *prog);

/*
 * Writes the effective configuration as JSON (every key, NUL-terminated) to
 * buf. Parsing the output gives back an equal struct. Returns the length
 * without the NUL, or -ENOSPC if cap is too small: TPO_CONFIG_DUMP_MAX
 * always suffices (the defaults take about 2.5 KiB).
 */
int tpo_config_dump(const struct tpo_config *c, char *buf, size_t cap);

/*
 * Ring capacity of the rings a stage produces into: its stages.<s>.ring_capacity,
 * or rings.capacity when that is 0. stage is enum tpo_stage_id (shm/ringset.h);
 * 0 for an unknown stage.
 */
uint64_t tpo_config_ring_capacity(const struct tpo_config *c, int stage);

/*
 * Whether a stage has processes: every stage but rag always; rag when
 * stages.rag.enabled is true, or "auto" with a context_file. Without rag
 * the fronts' rings lead straight to assemble (shm/ringset.h).
 */
int tpo_config_stage_runs(const struct tpo_config *c, int stage);

/* The embedded default configuration (supervisor/default_config.c). */
extern const char tpo_default_config[];

#endif
