/*
 * metrics.h — Prometheus text exposition (version 0.0.4) of an instance's
 * stats segment, served by the stream stage at /metrics.
 */
#ifndef TPO_METRICS_H
#define TPO_METRICS_H

#include <stddef.h>

#include "shm/stats.h"

/* Writes the exposition to buf; returns its length or -ENOSPC. Any process
 * with the stats segment mapped (read-only is enough) may call it. */
int tpo_metrics_render(const struct tpo_stats *st, char *buf, size_t cap);

#endif
