/*
 * topology.c — lanes and CPU pinning with hwloc (see topology.h).
 */
#include "supervisor/topology.h"

#include <errno.h>
#include <hwloc.h>
#include <stdarg.h>
#include <stdio.h>

static int neg_errno(void)
{
	return errno > 0 ? -errno : -EIO;
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/*
 * Loads the machine's topology, disallowed PUs included so that a CPU outside
 * our cpuset is reported as "not allowed" rather than "does not exist".
 * Release with hwloc_topology_destroy().
 */
static int topo_open(hwloc_topology_t *t)
{
	int rc;

	if (hwloc_topology_init(t) < 0)
		return neg_errno();
	if (hwloc_topology_set_flags(*t, HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED) < 0 ||
	    hwloc_topology_load(*t) < 0) {
		rc = neg_errno();
		hwloc_topology_destroy(*t);
		return rc;
	}
	return 0;
}

/* usable = allowed cpuset ∩ this process's binding (when it has one). */
static int usable_get(hwloc_topology_t t, hwloc_bitmap_t usable)
{
	hwloc_bitmap_t bind = hwloc_bitmap_alloc();

	if (!bind)
		return -ENOMEM;
	if (hwloc_bitmap_copy(usable, hwloc_topology_get_allowed_cpuset(t)) < 0)
		goto err_free;
	if (hwloc_get_cpubind(t, bind, HWLOC_CPUBIND_PROCESS) == 0 &&
	    hwloc_bitmap_intersects(bind, usable))
		hwloc_bitmap_and(usable, usable, bind);
	hwloc_bitmap_free(bind);
	return 0;

err_free:
	hwloc_bitmap_free(bind);
	return -ENOMEM;
}

/*
 * Writes the first usable PU of each core with one to out[0..max) (out may
 * be NULL to only count) and returns how many. Platforms where hwloc finds
 * no core objects fall back to one entry per usable PU.
 */
static int core_cpus(hwloc_topology_t t, hwloc_const_bitmap_t usable, int *out, int max)
{
	hwloc_obj_type_t type = HWLOC_OBJ_CORE;
	hwloc_bitmap_t tmp;
	int nobj, n = 0;

	nobj = hwloc_get_nbobjs_by_type(t, type);
	if (nobj <= 0) {
		type = HWLOC_OBJ_PU;
		nobj = hwloc_get_nbobjs_by_type(t, type);
	}
	tmp = hwloc_bitmap_alloc();
	if (!tmp)
		return -ENOMEM;
	for (int i = 0; i < nobj && (!out || n < max); i++) {
		hwloc_obj_t o = hwloc_get_obj_by_type(t, type, (unsigned)i);
		int first;

		if (!o || !o->cpuset)
			continue;
		hwloc_bitmap_and(tmp, o->cpuset, usable);
		first = hwloc_bitmap_first(tmp);
		if (first < 0)
			continue;
		if (out)
			out[n] = first;
		n++;
	}
	hwloc_bitmap_free(tmp);
	return n;
}

static int lanes_list(hwloc_topology_t t, hwloc_const_bitmap_t usable,
		      const struct tpo_lanes_spec *spec, int *cpus,
		      char *err, size_t errlen, const char *ulist)
{
	for (int i = 0; i < spec->ncpus; i++) {
		int cpu = spec->cpus[i];

		if (cpu < 0 || !hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu))
			return fail(err, errlen, -EINVAL,
				    "lanes: cpu %d does not exist (usable cpus: %s)",
				    cpu, ulist);
		if (!hwloc_bitmap_isset(usable, (unsigned)cpu))
			return fail(err, errlen, -EINVAL,
				    "lanes: cpu %d is not allowed for this process (usable cpus: %s)",
				    cpu, ulist);
		for (int j = 0; j < i; j++)
			if (spec->cpus[j] == cpu)
				return fail(err, errlen, -EINVAL,
					    "lanes: cpu %d is listed twice (a count of lanes may share cores, a list may not)",
					    cpu);
		cpus[i] = cpu;
	}
	return spec->ncpus;
}

int tpo_topology_lanes(const struct tpo_lanes_spec *spec, int *cpus, int max,
		       char *err, size_t errlen)
{
	int cores[TPO_LANES_MAX];
	char ulist[128] = "";
	hwloc_topology_t t;
	hwloc_bitmap_t usable;
	int rc, nc;

	if (max < 1)
		return fail(err, errlen, -ENOSPC, "lanes: no room for any lane");
	if (spec->mode == TPO_LANES_COUNT &&
	    (spec->count < 1 || spec->count > TPO_LANES_MAX))
		return fail(err, errlen, -EINVAL, "lanes: %d is out of range 1..%d",
			    spec->count, TPO_LANES_MAX);
	if (spec->mode == TPO_LANES_LIST &&
	    (spec->ncpus < 1 || spec->ncpus > TPO_LANES_MAX))
		return fail(err, errlen, -EINVAL, "lanes: a cpu list needs 1..%d cpus, not %d",
			    TPO_LANES_MAX, spec->ncpus);
	if (spec->mode < TPO_LANES_AUTO || spec->mode > TPO_LANES_LIST)
		return fail(err, errlen, -EINVAL, "lanes: unknown mode %d", spec->mode);
	if ((spec->mode == TPO_LANES_COUNT && spec->count > max) ||
	    (spec->mode == TPO_LANES_LIST && spec->ncpus > max))
		return fail(err, errlen, -ENOSPC, "lanes: more lanes than the %d supported", max);

	rc = topo_open(&t);
	if (rc < 0)
		return fail(err, errlen, rc, "lanes: cannot read the cpu topology (hwloc)");
	usable = hwloc_bitmap_alloc();
	if (!usable) {
		rc = fail(err, errlen, -ENOMEM, "lanes: out of memory");
		goto out_topo;
	}
	rc = usable_get(t, usable);
	if (rc < 0) {
		fail(err, errlen, rc, "lanes: out of memory");
		goto out_bitmap;
	}
	hwloc_bitmap_list_snprintf(ulist, sizeof(ulist), usable);

	if (spec->mode == TPO_LANES_LIST) {
		rc = lanes_list(t, usable, spec, cpus, err, errlen, ulist);
		goto out_bitmap;
	}
	nc = core_cpus(t, usable, cores, TPO_LANES_MAX);
	if (nc <= 0) {
		rc = fail(err, errlen, nc < 0 ? nc : -ENODEV,
			  "lanes: no usable cpu found (usable cpus: %s)", ulist);
		goto out_bitmap;
	}
	if (spec->mode == TPO_LANES_AUTO) {
		rc = nc < max ? nc : max;
		for (int i = 0; i < rc; i++)
			cpus[i] = cores[i];
	} else {
		rc = spec->count;
		for (int i = 0; i < rc; i++)
			cpus[i] = cores[i % nc];
	}

out_bitmap:
	hwloc_bitmap_free(usable);
out_topo:
	hwloc_topology_destroy(t);
	return rc;
}

int tpo_topology_pin(int cpu)
{
	hwloc_topology_t t;
	hwloc_obj_t pu;
	int rc;

	if (cpu < 0)
		return -EINVAL;
	rc = topo_open(&t);
	if (rc < 0)
		return rc;
	pu = hwloc_get_pu_obj_by_os_index(t, (unsigned)cpu);
	if (!pu || !pu->cpuset)
		rc = -EINVAL;
	else if (hwloc_set_cpubind(t, pu->cpuset, HWLOC_CPUBIND_PROCESS) < 0)
		rc = neg_errno();
	hwloc_topology_destroy(t);
	return rc;
}

int tpo_topology_ncores(void)
{
	hwloc_topology_t t;
	hwloc_bitmap_t usable;
	int rc;

	rc = topo_open(&t);
	if (rc < 0)
		return rc;
	usable = hwloc_bitmap_alloc();
	if (!usable) {
		rc = -ENOMEM;
		goto out_topo;
	}
	rc = usable_get(t, usable);
	if (rc == 0)
		rc = core_cpus(t, usable, NULL, 0);
	if (rc == 0)
		rc = -ENODEV;
	hwloc_bitmap_free(usable);
out_topo:
	hwloc_topology_destroy(t);
	return rc;
}
