/*
 * sup.h — one running instance: segments, children, restarts, shutdown.
 *
 * Called by main.c only; everything here runs in the supervisor process,
 * single-threaded, driven by one epoll loop over a signalfd (TERM, INT, HUP,
 * CHLD), one pidfd per child and one periodic timerfd.
 */
#ifndef TPO_SUP_H
#define TPO_SUP_H

#include "supervisor/config.h"

/* Exit codes (sysexits), documented in README.md and docs/supervisor.md. */
#define TPO_EX_OK      0
#define TPO_EX_USAGE   64
#define TPO_EX_CONFIG  78
#define TPO_EX_SYSTEM  111

/*
 * Runs the instance described by cfg in the foreground until SIGTERM/SIGINT
 * (or `tpo-supervisor stop`) has drained it. config_path is re-read on
 * SIGHUP (NULL: the embedded default). Returns an exit code.
 */
int tpo_sup_run(const struct tpo_config *cfg, const char *config_path);

/* `stop` and `status` against a running instance; return exit codes. */
int tpo_sup_stop(const char *name, int timeout_ms);
int tpo_sup_status(const char *name);
/* Sends sig to the instance's supervisor (reset: SIGUSR1, reload: SIGHUP). */
int tpo_sup_signal(const char *name, int sig);

#endif
