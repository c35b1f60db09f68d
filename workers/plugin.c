/*
 * plugin.c — the native plugin worker: loads stages.infer.plugin.path with
 * dlopen and drives it through the ABI of workers/plugin_abi.h, one
 * generate() step per poll of each job.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shm/ring.h"
#include "stagebin/proto.h"
#include "supervisor/config.h"
#include "workers/plugin_abi.h"
#include "workers/worker.h"

struct plug {
	void *dl;
	const struct tpo_plugin_api *api;
	void *ctx;
};

struct pjob {
	struct tpo_plugin_gen g;
	struct tpo_job *job;
	int seen;                    /* generate() was called */
	int failed;                  /* the token sink refused */
};

static int on_token(void *arg, const char *text, size_t len)
{
	struct pjob *p = arg;

	if (p->failed)
		return 1;
	if (p->job->sink->token(p->job, text, len) < 0) {
		p->failed = 1;
		return 1;
	}
	return 0;
}

static int pl_start(void *w, struct tpo_job *job)
{
	struct pjob *p = calloc(1, sizeof(*p));

	(void)w;
	if (!p)
		return -ENOMEM;
	p->job = job;
	p->g.req_id = job->req_id;
	p->g.prompt = job->prompt;
	p->g.prompt_len = job->prompt_len;
	p->g.max_tokens = job->max_tokens;
	p->g.seed = job->seed;
	p->g.model = job->model ? job->model : "";
	job->worker_state = p;
	job->wake_ns = 1;
	return 0;
}

static void pl_poll(void *w, struct tpo_job *job, uint64_t now)
{
	struct plug *pl = w;
	struct pjob *p = job->worker_state;
	int rc;

	p->seen = 1;
	p->g.next_ns = 0;
	rc = pl->api->generate(pl->ctx, &p->g, on_token, p);
	if (p->failed) {
		job->wake_ns = 0;
		job->sink->fail(job, 500, "the infer stage could not forward the answer");
		return;
	}
	if (rc == TPO_PLUGIN_STOP || rc == TPO_PLUGIN_LENGTH) {
		job->wake_ns = 0;
		job->sink->done(job, rc == TPO_PLUGIN_LENGTH ? TPO_FINISH_LENGTH : TPO_FINISH_STOP);
		return;
	}
	if (rc < 0) {
		char msg[300];
		p->g.err_msg[sizeof(p->g.err_msg) - 1] = 0;
		snprintf(msg, sizeof(msg), "plugin %s: %s", pl->api->name ? pl->api->name : "?",
			 p->g.err_msg[0] ? p->g.err_msg : "generation failed");
		job->wake_ns = 0;
		job->sink->fail(job, p->g.err_status >= 400 && p->g.err_status <= 599 ?
				p->g.err_status : 500, msg);
		return;
	}
	job->wake_ns = p->g.next_ns > now ? p->g.next_ns : now;
}

static void pl_cancel(void *w, struct tpo_job *job)
{
	struct plug *pl = w;
	struct pjob *p = job->worker_state;

	if (!p)
		return;
	if (p->seen)
		pl->api->cancel(pl->ctx, &p->g);
	free(p);
	job->worker_state = NULL;
	job->wake_ns = 0;
}

static void pl_destroy(void *w)
{
	struct plug *pl = w;

	if (!pl)
		return;
	if (pl->api && pl->ctx)
		pl->api->fini(pl->ctx);
	if (pl->dl)
		dlclose(pl->dl);
	free(pl);
}

static const struct tpo_worker_ops plugin_ops = {
	.name = "plugin",
	.start = pl_start,
	.poll = pl_poll,
	.cancel = pl_cancel,
	.destroy = pl_destroy,
};

int tpo_plugin_create(const struct tpo_config_infer *cfg, const struct tpo_worker_ops **ops,
		      void **w, char *err, size_t errcap)
{
	struct plug *pl;
	tpo_plugin_entry_fn *entry;
	int rc;

	if (!cfg->plugin.path[0]) {
		snprintf(err, errcap, "stages.infer.plugin.path: worker \"plugin\" needs a path");
		return -EINVAL;
	}
	pl = calloc(1, sizeof(*pl));
	if (!pl) {
		snprintf(err, errcap, "out of memory");
		return -ENOMEM;
	}
	pl->dl = dlopen(cfg->plugin.path, RTLD_NOW | RTLD_LOCAL);
	if (!pl->dl) {
		snprintf(err, errcap, "stages.infer.plugin.path: cannot load %s: %s",
			 cfg->plugin.path, dlerror());
		rc = -ENOENT;
		goto fail;
	}
	*(void **)&entry = dlsym(pl->dl, TPO_PLUGIN_ENTRY);
	pl->api = entry ? entry() : NULL;
	if (!pl->api || pl->api->abi_version != TPO_PLUGIN_ABI_VERSION || !pl->api->init ||
	    !pl->api->generate || !pl->api->cancel || !pl->api->fini) {
		snprintf(err, errcap, "stages.infer.plugin.path: %s does not export %s() with "
			 "ABI version %d and every function", cfg->plugin.path, TPO_PLUGIN_ENTRY,
			 TPO_PLUGIN_ABI_VERSION);
		pl->api = NULL;
		rc = -EINVAL;
		goto fail;
	}
	rc = pl->api->init(cfg->plugin.options, &pl->ctx);
	if (rc < 0) {
		snprintf(err, errcap, "plugin %s: init failed: %s", cfg->plugin.path, strerror(-rc));
		pl->ctx = NULL;
		goto fail;
	}
	*ops = &plugin_ops;
	*w = pl;
	return 0;
fail:
	pl_destroy(pl);
	return rc;
}

