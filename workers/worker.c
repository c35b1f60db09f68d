/*
 * worker.c — picks and creates the worker stages.infer.worker names.
 */
#include <errno.h>
#include <stdio.h>

#include "supervisor/config.h"
#include "workers/upstream.h"
#include "workers/worker.h"

int tpo_worker_create(const struct tpo_config_infer *cfg, struct tpo_stats *stats, int lane,
		      const struct tpo_worker_ops **ops, void **w, char *err, size_t errcap)
{
	const struct tpo_proto *proto = NULL;

	err[0] = 0;
	switch (cfg->worker) {
	case TPO_WORKER_MOCK: {
		struct tpo_mock_params mp = {
			.tokens_per_second = cfg->mock.tokens_per_second,
			.max_tokens = cfg->mock.max_tokens,
			.seed = cfg->mock.seed,
		};
		*ops = &tpo_mock_ops;
		*w = tpo_mock_create(&mp);
		if (!*w) {
			snprintf(err, errcap, "out of memory");
			return -ENOMEM;
		}
		return 0;
	}
	case TPO_WORKER_PLUGIN:
		return tpo_plugin_create(cfg, ops, w, err, errcap);
	case TPO_WORKER_OPENAI:    proto = &tpo_proto_openai; break;
	case TPO_WORKER_LLAMACPP:  proto = &tpo_proto_llamacpp; break;
	case TPO_WORKER_TGI:       proto = &tpo_proto_tgi; break;
	case TPO_WORKER_ANTHROPIC: proto = &tpo_proto_anthropic; break;
	default:
		snprintf(err, errcap, "stages.infer.worker: unknown worker %d", cfg->worker);
		return -EINVAL;
	}
	*ops = &tpo_upstream_ops;
	return tpo_upstream_create(cfg, proto, stats, lane, w, err, errcap);
}
