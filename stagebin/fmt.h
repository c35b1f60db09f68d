/*
 * fmt.h — integer formatting for the per-request paths of the front (HTTP
 * heads, chunk sizes, response JSON), where snprintf's format parsing cost
 * more than the rest of a response's head (callgrind).
 */
#ifndef TPO_FMT_H
#define TPO_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Longest output of the functions below. */
#define TPO_FMT_U64_MAX 20
#define TPO_FMT_I64_MAX 20

/* v in decimal at dst (no NUL); its length (1..20). */
static inline size_t tpo_fmt_u64(char *dst, uint64_t v)
{
	char tmp[TPO_FMT_U64_MAX];
	size_t n = 0;

	do {
		tmp[sizeof(tmp) - ++n] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	memcpy(dst, tmp + sizeof(tmp) - n, n);
	return n;
}

/* v in decimal, '-' first if negative; its length (1..20). */
static inline size_t tpo_fmt_i64(char *dst, int64_t v)
{
	if (v >= 0)
		return tpo_fmt_u64(dst, (uint64_t)v);
	dst[0] = '-';
	return 1 + tpo_fmt_u64(dst + 1, (uint64_t)0 - (uint64_t)v);
}

/* v in lower-case hex, at least width digits (0-padded, width <= 16); its length. */
static inline size_t tpo_fmt_hex(char *dst, uint64_t v, size_t width)
{
	static const char digits[] = "0123456789abcdef";
	size_t n = 1;

	while (n < 16 && (v >> (4 * n)))
		n++;
	if (n < width)
		n = width;
	for (size_t i = n; i-- > 0; v >>= 4)
		dst[i] = digits[v & 15];
	return n;
}

#endif
