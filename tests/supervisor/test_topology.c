/*
 * test_topology.c — lane resolution and pinning on the machine at hand.
 *
 * Tests are written against whatever machine runs them: counts are derived
 * from tpo_topology_ncores(), never assumed.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <sched.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "supervisor/topology.h"

static int resolve(const struct tpo_lanes_spec *s, int *cpus, char *err, size_t len)
{
	err[0] = '\0';
	return tpo_topology_lanes(s, cpus, TPO_LANES_MAX, err, len);
}

/* The lowest CPU this process may run on, per the kernel. */
static int first_allowed_cpu(void)
{
	cpu_set_t set;

	cr_assert_eq(sched_getaffinity(0, sizeof(set), &set), 0);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set))
			return c;
	cr_assert_fail("empty affinity mask");
	return -1;
}

Test(topology, ncores_positive)
{
	int n = tpo_topology_ncores();

	cr_assert_geq(n, 1, "ncores %d", n);
	cr_assert_leq(n, sysconf(_SC_NPROCESSORS_ONLN));
}

Test(topology, auto_one_lane_per_core)
{
	struct tpo_lanes_spec s = { .mode = TPO_LANES_AUTO };
	int cpus[TPO_LANES_MAX], ncores = tpo_topology_ncores();
	char err[256];
	int n = resolve(&s, cpus, err, sizeof(err));

	cr_assert_geq(n, 1, "auto: %d %s", n, err);
	cr_assert_leq(n, ncores);
	cr_assert_leq(n, TPO_LANES_MAX);
	if (ncores <= TPO_LANES_MAX)
		cr_assert_eq(n, ncores);
	for (int i = 0; i < n; i++)
		for (int j = 0; j < i; j++)
			cr_assert_neq(cpus[i], cpus[j], "auto lanes share cpu %d", cpus[i]);
}

Test(topology, auto_respects_max)
{
	struct tpo_lanes_spec s = { .mode = TPO_LANES_AUTO };
	int cpus[1];

	cr_assert_eq(tpo_topology_lanes(&s, cpus, 1, NULL, 0), 1);
	cr_assert_geq(cpus[0], 0);
}

Test(topology, count_three_gives_three)
{
	struct tpo_lanes_spec s = { .mode = TPO_LANES_COUNT, .count = 3 };
	int cpus[TPO_LANES_MAX], ncores = tpo_topology_ncores();
	char err[256];

	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), 3, "%s", err);
	if (ncores < 3)
		cr_assert_eq(cpus[ncores], cpus[0], "lanes wrap around the cores");
}

Test(topology, count_beyond_cores_wraps)
{
	int ncores = tpo_topology_ncores();
	struct tpo_lanes_spec s = { .mode = TPO_LANES_COUNT, .count = ncores + 1 };
	struct tpo_lanes_spec a = { .mode = TPO_LANES_AUTO };
	int cpus[TPO_LANES_MAX], acpus[TPO_LANES_MAX];
	char err[256];

	if (ncores + 1 > TPO_LANES_MAX)
		cr_skip_test("more than %d cores", TPO_LANES_MAX - 1);
	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), ncores + 1, "%s", err);
	cr_assert_eq(resolve(&a, acpus, err, sizeof(err)), ncores);
	for (int i = 0; i < ncores + 1; i++)
		cr_assert_eq(cpus[i], acpus[i % ncores]);
}

Test(topology, count_out_of_range)
{
	struct tpo_lanes_spec s = { .mode = TPO_LANES_COUNT, .count = 0 };
	int cpus[TPO_LANES_MAX];
	char err[256];

	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "lanes"), "%s", err);
	s.count = TPO_LANES_MAX + 1;
	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
	s.count = 2;
	cr_assert_eq(tpo_topology_lanes(&s, cpus, 1, err, sizeof(err)), -ENOSPC);
}

Test(topology, list_first_allowed_cpu_ok)
{
	int c = first_allowed_cpu();
	struct tpo_lanes_spec s = { .mode = TPO_LANES_LIST, .ncpus = 1, .cpus = { c } };
	int cpus[TPO_LANES_MAX] = { -1 };
	char err[256];

	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), 1, "list [%d]: %s", c, err);
	cr_assert_eq(cpus[0], c);
}

Test(topology, list_nonexistent_cpu_named)
{
	struct tpo_lanes_spec s = { .mode = TPO_LANES_LIST, .ncpus = 1, .cpus = { 9999 } };
	int cpus[TPO_LANES_MAX];
	char err[256];

	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "9999"), "message must name the cpu: %s", err);
	cr_assert(strstr(err, "does not exist"), "%s", err);
}

Test(topology, list_negative_and_duplicate_rejected)
{
	int c = first_allowed_cpu();
	struct tpo_lanes_spec s = { .mode = TPO_LANES_LIST, .ncpus = 1, .cpus = { -3 } };
	int cpus[TPO_LANES_MAX];
	char err[256];

	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "-3"), "%s", err);
	s.ncpus = 2;
	s.cpus[0] = c;
	s.cpus[1] = c;
	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "twice"), "%s", err);
	s.ncpus = 0;
	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
}

Test(topology, bad_mode_rejected)
{
	struct tpo_lanes_spec s = { .mode = 7 };
	int cpus[TPO_LANES_MAX];
	char err[256];

	cr_assert_eq(resolve(&s, cpus, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "mode"), "%s", err);
}

Test(topology, pin_child_to_one_cpu)
{
	int c = first_allowed_cpu(), status = 0;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		cpu_set_t set;

		if (tpo_topology_pin(c) != 0)
			_exit(2);
		if (sched_getaffinity(0, sizeof(set), &set) != 0)
			_exit(3);
		_exit(CPU_COUNT(&set) == 1 && CPU_ISSET(c, &set) ? 0 : 4);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child died: status %#x", status);
	cr_assert_eq(WEXITSTATUS(status), 0,
		     "child: 2 pin failed, 3 getaffinity failed, 4 wrong mask; got %d",
		     WEXITSTATUS(status));
}

Test(topology, pin_nonexistent_cpu_fails)
{
	cr_assert_eq(tpo_topology_pin(9999), -EINVAL);
	cr_assert_eq(tpo_topology_pin(-1), -EINVAL);
}
