/*
 * metrics.h — Prometheus text exposition (version 0.0.4) of an instance's
 * stats segment, served by the stream stage at /metrics.
 *
 * Families: tpo_instance_* (identity, lanes, start time, draining);
 * tpo_stage_* per stage × lane (restarts, requests received/completed,
 * errors, tokens, in-flight, pid, state, input queue depth and capacity in
 * bytes — a ring is counted at the stage that consumes it);
 * tpo_http_responses_total{code}, tpo_sheds_total{policy},
 * tpo_request_timeouts_total (the front, summed over lanes);
 * tpo_upstream_* per endpoint (state, in-flight, requests, errors); and
 * the histograms tpo_stage_service_seconds, tpo_stage_queue_wait_seconds,
 * tpo_time_to_first_token_seconds per stage × lane that has samples.
 */
#ifndef TPO_METRICS_H
#define TPO_METRICS_H

#include <stddef.h>

#include "shm/stats.h"

/* Writes the exposition to buf; returns its length, -ENOSPC if it does not
 * fit in cap, -EAGAIN if the instance header stayed busy, -ENOMEM. Any
 * process with the stats segment mapped (read-only is enough) may call it;
 * it allocates (and frees) about 60 KB of scratch. A buffer of
 * TPO_METRICS_MAX_BYTES holds the output of any instance (16 lanes, every
 * histogram and endpoint slot in use). */
#define TPO_METRICS_MAX_BYTES (1u << 20)
int tpo_metrics_render(const struct tpo_stats *st, char *buf, size_t cap);

#endif
