/*
 * ringset.c — lay out and find the rings of one instance (see ringset.h).
 */
#include "shm/ringset.h"

#include <errno.h>
#include <string.h>

static const char *const stage_names[TPO_ST_COUNT] = {
	"stream", "rag", "assemble", "infer", "post",
};

const char *tpo_stage_name(int stage)
{
	return stage >= 0 && stage < TPO_ST_COUNT ? stage_names[stage] : "?";
}

int tpo_stage_from_name(const char *name)
{
	for (int i = 0; i < TPO_ST_COUNT; i++)
		if (strcmp(name, stage_names[i]) == 0)
			return i;
	return -EINVAL;
}

#define ADM_SIZE (sizeof(_Atomic uint32_t) * TPO_RINGSET_MAX_LANES * TPO_RINGSET_MAX_LANES)
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((uint64_t)(a) - 1))

/* Calls fn for every ring in creation order; returns the count. */
static uint32_t each_ring(uint32_t nlanes, uint32_t absent,
			  void (*fn)(void *arg, uint32_t id, int fs, int fl, int ts, int tl),
			  void *arg)
{
	int rag = !(absent & (1u << TPO_ST_RAG));
	uint32_t id = 0, i, j;

	for (i = 0; i < nlanes; i++) {
		for (j = 0; j < nlanes; j++)
			fn(arg, id++, TPO_ST_STREAM, (int)j,
			   rag ? TPO_ST_RAG : TPO_ST_ASSEMBLE, (int)i);
		if (rag)
			fn(arg, id++, TPO_ST_RAG, (int)i, TPO_ST_ASSEMBLE, (int)i);
		fn(arg, id++, TPO_ST_ASSEMBLE, (int)i, TPO_ST_INFER, (int)i);
		fn(arg, id++, TPO_ST_INFER, (int)i, TPO_ST_POST, (int)i);
		for (j = 0; j < nlanes; j++)
			fn(arg, id++, TPO_ST_POST, (int)i, TPO_ST_STREAM, (int)j);
	}
	return id;
}

struct layout {
	const struct tpo_ringset_spec *spec;
	struct tpo_ringset_ent *ent;   /* NULL: only measure */
	uint8_t *base;
	uint64_t off;
	int err;
};

static void place(void *arg, uint32_t id, int fs, int fl, int ts, int tl)
{
	struct layout *l = arg;
	uint64_t cap = l->spec->capacity[fs];

	l->off = ALIGN_UP(l->off, 4096);
	if (l->ent) {
		struct tpo_ringset_ent *e = &l->ent[id];
		e->offset = l->off;
		e->capacity = cap;
		e->from_stage = (uint8_t)fs;
		e->from_lane = (uint8_t)fl;
		e->to_stage = (uint8_t)ts;
		e->to_lane = (uint8_t)tl;
		e->id = id;
		if (tpo_ring_init(l->base + l->off, cap, l->spec->max_len, id, 0) < 0)
			l->err = -EINVAL;
	}
	l->off += tpo_ring_footprint(cap);
}

static void noop(void *arg, uint32_t id, int fs, int fl, int ts, int tl)
{
	(void)arg; (void)id; (void)fs; (void)fl; (void)ts; (void)tl;
}

int tpo_ringset_create(struct tpo_ringset *rs, const char *instance,
		       const struct tpo_ringset_spec *spec)
{
	struct layout l = { .spec = spec };
	uint32_t nrings, clen;
	uint64_t adm_off, config_off, size;
	int err;

	memset(rs, 0, sizeof(*rs));
	if (spec->nlanes == 0 || spec->nlanes > TPO_RINGSET_MAX_LANES ||
	    (spec->absent & ~(1u << TPO_ST_RAG)))
		return -EINVAL;
	nrings = each_ring(spec->nlanes, spec->absent, noop, NULL);
	clen = spec->config ? (uint32_t)strlen(spec->config) : 0;
	adm_off = TPO_SEG_HDR_SIZE + sizeof(struct tpo_ringset_hdr) +
		  (uint64_t)nrings * sizeof(struct tpo_ringset_ent);
	config_off = adm_off + ADM_SIZE;
	l.off = config_off + clen + 1;
	each_ring(spec->nlanes, spec->absent, place, &l);
	size = ALIGN_UP(l.off, 4096);

	err = tpo_seg_create(&rs->seg, instance, "rings", TPO_SEG_RINGS, size);
	if (err < 0)
		return err;
	rs->hdr = (struct tpo_ringset_hdr *)((uint8_t *)rs->seg.base + TPO_SEG_HDR_SIZE);
	rs->ent = (struct tpo_ringset_ent *)(rs->hdr + 1);
	rs->hdr->nlanes = spec->nlanes;
	rs->hdr->nrings = nrings;
	rs->hdr->config_off = (uint32_t)config_off;
	rs->hdr->config_len = clen;
	rs->hdr->max_len = spec->max_len;
	rs->hdr->adm_off = (uint32_t)adm_off;
	rs->load = (void *)((uint8_t *)rs->seg.base + adm_off);
	if (clen)
		memcpy((uint8_t *)rs->seg.base + config_off, spec->config, clen);

	l.ent = rs->ent;
	l.base = rs->seg.base;
	l.off = config_off + clen + 1;
	l.err = 0;
	rs->hdr->absent = spec->absent;
	each_ring(spec->nlanes, spec->absent, place, &l);
	if (l.err < 0) {
		tpo_seg_unlink(instance, "rings");   /* while we hold its lock */
		tpo_seg_close(&rs->seg);
		return l.err;
	}
	tpo_seg_publish(&rs->seg, TPO_RINGSET_VERSION);
	return 0;
}

int tpo_ringset_attach(struct tpo_ringset *rs, const char *instance)
{
	uint64_t need;
	int err;

	memset(rs, 0, sizeof(*rs));
	err = tpo_seg_attach(&rs->seg, instance, "rings", TPO_SEG_RINGS,
			     TPO_RINGSET_VERSION, 1, NULL);
	if (err < 0)
		return err;
	rs->hdr = (struct tpo_ringset_hdr *)((uint8_t *)rs->seg.base + TPO_SEG_HDR_SIZE);
	rs->ent = (struct tpo_ringset_ent *)(rs->hdr + 1);
	need = TPO_SEG_HDR_SIZE + sizeof(*rs->hdr) +
	       (uint64_t)rs->hdr->nrings * sizeof(*rs->ent);
	if (need > rs->seg.size || rs->hdr->adm_off < need ||
	    (uint64_t)rs->hdr->adm_off + ADM_SIZE > rs->seg.size ||
	    (uint64_t)rs->hdr->config_off + rs->hdr->config_len + 1 > rs->seg.size ||
	    (rs->hdr->absent & ~(1u << TPO_ST_RAG)))
		goto err_bad;
	for (uint32_t i = 0; i < rs->hdr->nrings; i++)
		if (rs->ent[i].offset + tpo_ring_footprint(rs->ent[i].capacity) > rs->seg.size)
			goto err_bad;
	rs->load = (void *)((uint8_t *)rs->seg.base + rs->hdr->adm_off);
	return 0;
err_bad:
	tpo_seg_close(&rs->seg);
	return -EBADF;
}

void tpo_ringset_close(struct tpo_ringset *rs)
{
	tpo_seg_close(&rs->seg);
	rs->hdr = NULL;
	rs->ent = NULL;
}

int tpo_ringset_next(const struct tpo_ringset *rs, int s)
{
	int n = s == TPO_ST_POST ? TPO_ST_STREAM : s + 1;

	return (rs->hdr->absent & (1u << n)) ? n + 1 : n;
}

int tpo_ringset_prev(const struct tpo_ringset *rs, int s)
{
	int p = s == TPO_ST_STREAM ? TPO_ST_POST : s - 1;

	return (rs->hdr->absent & (1u << p)) ? p - 1 : p;
}

int tpo_ringset_index(const struct tpo_ringset *rs, int from_stage, int from_lane,
		      int to_stage, int to_lane)
{
	for (uint32_t i = 0; i < rs->hdr->nrings; i++) {
		const struct tpo_ringset_ent *e = &rs->ent[i];
		if (e->from_stage == from_stage && e->from_lane == from_lane &&
		    e->to_stage == to_stage && e->to_lane == to_lane)
			return (int)i;
	}
	return -ENOENT;
}

void *tpo_ringset_find(const struct tpo_ringset *rs, int from_stage, int from_lane,
		       int to_stage, int to_lane)
{
	int i = tpo_ringset_index(rs, from_stage, from_lane, to_stage, to_lane);

	return i < 0 ? NULL : (uint8_t *)rs->seg.base + rs->ent[i].offset;
}
