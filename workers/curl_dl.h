/*
 * curl_dl.h — libcurl loaded at run time by the first HTTP worker.
 *
 * An infer process that runs the built-in mock or a plugin never maps
 * libcurl and the ~30 libraries it pulls in (TLS, LDAP, Kerberos, IDN, ...):
 * ~6.8 MiB of resident pages and their relocation work at every start. The
 * workers call libcurl through the table below, filled by tpo_curl_load();
 * the binaries therefore carry no reference to a curl symbol and the linker
 * (--as-needed) records no dependency on libcurl.
 *
 * Include this instead of <curl/curl.h>: after it, the curl_* functions the
 * workers use are macros for calls through tpo_curl, valid once
 * tpo_curl_load() has returned 0.
 */
#ifndef TPO_CURL_DL_H
#define TPO_CURL_DL_H

#include <stddef.h>

/* The checking macros of typecheck-gcc.h would wrap the names we redefine. */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>

#define TPO_CURL_SONAME "libcurl.so.4"

struct tpo_curl_api {
	CURLcode (*global_init)(long flags);
	CURL *(*easy_init)(void);
	CURLcode (*easy_setopt)(CURL *h, CURLoption opt, ...);
	CURLcode (*easy_getinfo)(CURL *h, CURLINFO info, ...);
	void (*easy_reset)(CURL *h);
	void (*easy_cleanup)(CURL *h);
	const char *(*easy_strerror)(CURLcode rc);
	CURLM *(*multi_init)(void);
	CURLMcode (*multi_setopt)(CURLM *m, CURLMoption opt, ...);
	CURLMcode (*multi_add_handle)(CURLM *m, CURL *h);
	CURLMcode (*multi_remove_handle)(CURLM *m, CURL *h);
	CURLMcode (*multi_perform)(CURLM *m, int *running);
	CURLMcode (*multi_poll)(CURLM *m, struct curl_waitfd *extra, unsigned n,
				int timeout_ms, int *numfds);
	CURLMsg *(*multi_info_read)(CURLM *m, int *queued);
	CURLMcode (*multi_cleanup)(CURLM *m);
	struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
	void (*slist_free_all)(struct curl_slist *l);
};

extern struct tpo_curl_api tpo_curl;

/*
 * Loads libcurl (TPO_CURL_SONAME) and fills tpo_curl, once per process;
 * later calls return the first result. Returns 0, or -ENOENT with a
 * sentence in err naming what is missing.
 */
int tpo_curl_load(char *err, size_t errcap);

#ifndef TPO_CURL_DL_IMPL
/* curl.h defines these three as function-like macros of themselves. */
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_global_init        tpo_curl.global_init
#define curl_easy_init          tpo_curl.easy_init
#define curl_easy_setopt        tpo_curl.easy_setopt
#define curl_easy_getinfo       tpo_curl.easy_getinfo
#define curl_easy_reset         tpo_curl.easy_reset
#define curl_easy_cleanup       tpo_curl.easy_cleanup
#define curl_easy_strerror      tpo_curl.easy_strerror
#define curl_multi_init         tpo_curl.multi_init
#define curl_multi_setopt       tpo_curl.multi_setopt
#define curl_multi_add_handle   tpo_curl.multi_add_handle
#define curl_multi_remove_handle tpo_curl.multi_remove_handle
#define curl_multi_perform      tpo_curl.multi_perform
#define curl_multi_poll         tpo_curl.multi_poll
#define curl_multi_info_read    tpo_curl.multi_info_read
#define curl_multi_cleanup      tpo_curl.multi_cleanup
#define curl_slist_append       tpo_curl.slist_append
#define curl_slist_free_all     tpo_curl.slist_free_all
#endif

#endif
