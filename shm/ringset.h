/*
 * ringset.h — the rings segment of one instance: every ring of the pipeline,
 * plus the effective configuration the stages run with.
 *
 * /tpo.<instance>.rings, kind TPO_SEG_RINGS, version TPO_RINGSET_VERSION:
 *
 *   offset        size         field
 *   0             64           struct tpo_seg_hdr (seg.h)
 *   64            64           struct tpo_ringset_hdr
 *   128           32 * nrings  struct tpo_ringset_ent[nrings]: where each
 *                              ring lives and which stage/lane ends it joins
 *   adm_off       1024         uint32 load[16][16]: requests in flight that
 *                              stream_j admitted to lane i, written only by
 *                              stream_j (zeroed when it starts), summed over
 *                              j by every front for lane i's budget
 *   config_off    config_len   effective configuration, JSON, NUL-terminated
 *   (4 KiB aligned)            rings: struct tpo_ring_shm + data, each at a
 *                              4 KiB-aligned offset named by its entry
 *
 * Ring order, for lanes i, j in 0..nlanes:
 *   stream_j -> rag_i        all pairs (the ingress mesh), index ingress(j, i)
 *   rag_i -> assemble_i, assemble_i -> infer_i, infer_i -> post_i
 *   post_i -> stream_j       all pairs (the egress mesh)
 * An instance without rag processes (hdr.absent has bit TPO_ST_RAG) has
 * stream_j -> assemble_i as its ingress mesh and no rag_i -> assemble_i.
 * tpo_ringset_find() looks a ring up by its two ends; nothing depends on the
 * order but the creator.
 */
#ifndef TPO_RINGSET_H
#define TPO_RINGSET_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shm/ring.h"
#include "shm/seg.h"

#define TPO_RINGSET_VERSION 3   /* 2: ring header 256 bytes, sleep flags on their own line;
				   3: stages may be absent (hdr.absent) */
#define TPO_RINGSET_MAX_LANES 16

enum tpo_stage_id {
	TPO_ST_STREAM = 0,
	TPO_ST_RAG,
	TPO_ST_ASSEMBLE,
	TPO_ST_INFER,
	TPO_ST_POST,
	TPO_ST_COUNT
};

struct tpo_ringset_hdr {
	uint32_t nlanes;
	uint32_t nrings;
	uint32_t config_off;
	uint32_t config_len;     /* without the NUL */
	uint32_t max_len;
	uint32_t adm_off;        /* admission table, from the segment base */
	uint64_t generation;     /* bumped by the supervisor on reload */
	uint32_t absent;         /* bit 1 << stage: a stage with no processes (only rag) */
	uint8_t  reserved1[28];
};
_Static_assert(sizeof(struct tpo_ringset_hdr) == 64, "ringset hdr");
_Static_assert(offsetof(struct tpo_ringset_hdr, generation) == 24, "ringset generation");
_Static_assert(offsetof(struct tpo_ringset_hdr, absent) == 32, "ringset absent");

struct tpo_ringset_ent {
	uint64_t offset;         /* from the segment base */
	uint64_t capacity;
	uint8_t  from_stage, from_lane, to_stage, to_lane;
	uint32_t id;
	uint64_t reserved;
};
_Static_assert(sizeof(struct tpo_ringset_ent) == 32, "ringset ent");
_Static_assert(offsetof(struct tpo_ringset_ent, from_stage) == 16, "ent ends");

/* Mapping of the rings segment. */
struct tpo_ringset {
	struct tpo_seg seg;
	struct tpo_ringset_hdr *hdr;
	struct tpo_ringset_ent *ent;
	_Atomic uint32_t (*load)[TPO_RINGSET_MAX_LANES];  /* load[stream j][lane i] */
};

/* Per-stage ring capacity (bytes, power of two), indexed by producing stage. */
struct tpo_ringset_spec {
	uint32_t nlanes;
	uint32_t max_len;
	uint64_t capacity[TPO_ST_COUNT];
	uint32_t absent;         /* bit 1 << TPO_ST_RAG: no rag rings (nothing else may be absent) */
	const char *config;      /* effective configuration JSON */
};

/* Creates, lays out and publishes the segment (owner: the caller). */
int tpo_ringset_create(struct tpo_ringset *rs, const char *instance,
		       const struct tpo_ringset_spec *spec);
/* Maps an existing, published ring set (read-write: stages own their rings). */
int tpo_ringset_attach(struct tpo_ringset *rs, const char *instance);
void tpo_ringset_close(struct tpo_ringset *rs);

/* The stage whose processes read what stage s writes (rag may be absent). */
int tpo_ringset_next(const struct tpo_ringset *rs, int s);
/* The stage whose processes write what stage s reads. */
int tpo_ringset_prev(const struct tpo_ringset *rs, int s);

/* The ring joining (from_stage, from_lane) to (to_stage, to_lane), or NULL. */
void *tpo_ringset_find(const struct tpo_ringset *rs, int from_stage, int from_lane,
		       int to_stage, int to_lane);
/* Index of that ring (its stats slot), or -ENOENT. */
int tpo_ringset_index(const struct tpo_ringset *rs, int from_stage, int from_lane,
		      int to_stage, int to_lane);

const char *tpo_stage_name(int stage);
int tpo_stage_from_name(const char *name);

#endif
