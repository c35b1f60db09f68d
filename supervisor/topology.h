/*
 * topology.h — lanes and CPU pinning (hwloc).
 *
 * A lane is a core that runs one process of every stage. The supervisor turns
 * the config's "lanes" value into a list of CPUs (Linux OS indices of PUs, as
 * sched_setaffinity and /proc/cpuinfo number them), one per lane, then each
 * forked stage process pins itself with tpo_topology_pin().
 *
 * "Usable" CPUs below are those hwloc reports as allowed (cgroup cpuset)
 * AND in the supervisor's own affinity mask, so `taskset -c 1 tpo-supervisor`
 * keeps every lane on CPU 1.
 *
 * Each call loads its own hwloc topology and destroys it before returning:
 * these are start-up and restart paths, not hot paths (a load takes a few ms).
 * Any process may call them; they keep no state.
 */
#ifndef TPO_TOPOLOGY_H
#define TPO_TOPOLOGY_H

#include <stddef.h>

#define TPO_LANES_MAX 16

enum tpo_lanes_mode {
	TPO_LANES_AUTO  = 0,   /* one lane per usable core, at most TPO_LANES_MAX */
	TPO_LANES_COUNT = 1,   /* count lanes over the usable cores */
	TPO_LANES_LIST  = 2,   /* exactly the CPUs in cpus[0..ncpus) */
};

/* Filled by the config module. */
struct tpo_lanes_spec {
	int mode;                   /* enum tpo_lanes_mode */
	int count;                  /* COUNT: 1..TPO_LANES_MAX */
	int ncpus;                  /* LIST: 1..TPO_LANES_MAX */
	int cpus[TPO_LANES_MAX];    /* LIST: OS indices of PUs */
};

/*
 * Resolves spec into one CPU per lane, written to cpus[0..ret).
 *  - AUTO: the first usable PU of each core that has one, in hwloc's
 *    logical core order, at most min(TPO_LANES_MAX, max) lanes.
 *  - COUNT: the AUTO list repeated round-robin until count lanes: with more
 *    lanes than cores, lanes share cores (lane i on core i mod ncores). That
 *    is allowed on purpose — stages block on doorbells rather than spin.
 *  - LIST: each CPU must exist and be usable, and appear only once (use
 *    COUNT to put several lanes on one core).
 * Returns the number of lanes (>= 1), or -EINVAL for a spec that cannot be
 * met (err says which value and why, e.g. "lanes: cpu 9999 does not exist
 * (usable cpus: 0-1)"), -ENOSPC when count/ncpus exceeds max, or another
 * -errno when hwloc cannot load the topology. err may be NULL.
 */
int tpo_topology_lanes(const struct tpo_lanes_spec *spec, int *cpus, int max,
		       char *err, size_t errlen);

/*
 * Binds the calling process (all its threads) to the PU with OS index cpu.
 * Returns 0, -EINVAL if no such PU exists, or -errno from the binding
 * (e.g. -EPERM, -EXDEV outside the allowed cpuset).
 */
int tpo_topology_pin(int cpu);

/* The number of cores with at least one usable PU (>= 1), or -errno. */
int tpo_topology_ncores(void);

#endif
