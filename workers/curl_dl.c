/*
 * curl_dl.c — libcurl loaded at run time (see curl_dl.h).
 */
#define TPO_CURL_DL_IMPL 1
#include "workers/curl_dl.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

struct tpo_curl_api tpo_curl;

static int load_state;   /* 0 not tried, 1 loaded, -errno failed */
static char load_err[256];

/* The table in the order of struct tpo_curl_api. */
static const char *const names[] = {
	"curl_global_init", "curl_easy_init", "curl_easy_setopt", "curl_easy_getinfo",
	"curl_easy_reset", "curl_easy_cleanup", "curl_easy_strerror", "curl_multi_init",
	"curl_multi_setopt", "curl_multi_add_handle", "curl_multi_remove_handle",
	"curl_multi_perform", "curl_multi_poll", "curl_multi_info_read",
	"curl_multi_cleanup", "curl_slist_append", "curl_slist_free_all",
};
_Static_assert(sizeof(names) / sizeof(names[0]) ==
	       sizeof(struct tpo_curl_api) / sizeof(void (*)(void)), "one name per entry");

int tpo_curl_load(char *err, size_t errcap)
{
	void (*fn[sizeof(names) / sizeof(names[0])])(void);
	void *lib;

	if (load_state == 0) {
		lib = dlopen(TPO_CURL_SONAME, RTLD_NOW | RTLD_LOCAL);
		if (!lib) {
			snprintf(load_err, sizeof(load_err), "unable to load %s (%s): install "
				 "the Debian package libcurl4", TPO_CURL_SONAME, dlerror());
			load_state = -ENOENT;
		}
		for (size_t i = 0; lib && i < sizeof(names) / sizeof(names[0]); i++) {
			/* POSIX: a function pointer round-trips through dlsym's
			 * void *. */
			void *p = dlsym(lib, names[i]);
			if (!p) {
				snprintf(load_err, sizeof(load_err), "%s has no %s: libcurl "
					 "7.66 or later is needed", TPO_CURL_SONAME, names[i]);
				load_state = -ENOENT;
				dlclose(lib);
				lib = NULL;
				break;
			}
			memcpy(&fn[i], &p, sizeof(p));
		}
		if (lib) {
			memcpy(&tpo_curl, fn, sizeof(tpo_curl));
			load_state = 1;
		}
	}
	if (load_state < 0) {
		snprintf(err, errcap, "%s", load_err);
		return load_state;
	}
	return 0;
}
