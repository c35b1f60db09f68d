/*
 * test_upstream_curl.c — every test of test_upstream.c once more with the
 * endpoint named by a host name, which tpo-infer's own HTTP client leaves to
 * libcurl (workers/h1.h): the same behaviour through both clients.
 */
#define UP_HOST "localhost"
#define UP_VIA_CURL 1
#include "tests/workers/test_upstream.c"
