/*
 * proc.h — one number from /proc/PID/status, for tests that count a
 * process's sleeps (voluntary_ctxt_switches) or its memory (VmRSS).
 * Header-only.
 */
#ifndef TPO_TESTS_PROC_H
#define TPO_TESTS_PROC_H

#include <stdio.h>
#include <string.h>
#include <sys/types.h>

/* The integer after "key:" in /proc/PID/status (pid 0: this process), -1 if
 * the process or the key is gone. */
__attribute__((unused))
static long proc_status(pid_t pid, const char *key)
{
	char path[64], line[256];
	size_t kl = strlen(key);
	long n = -1;
	FILE *f;

	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/status");
	if (!(f = fopen(path, "r")))
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, kl) && line[kl] == ':' &&
		    sscanf(line + kl + 1, "%ld", &n) == 1)
			break;
	fclose(f);
	return n;
}

/* Times pid went to sleep (voluntary context switches), -1: gone. */
__attribute__((unused))
static long sleeps_of(pid_t pid)
{
	return proc_status(pid, "voluntary_ctxt_switches");
}

#endif
