/*
 * test_fmt.c — stagebin/fmt.h against printf, at the edges of each range.
 */
#include <criterion/criterion.h>

#include <inttypes.h>
#include <stdio.h>

#include "stagebin/fmt.h"

static const uint64_t vals[] = {
	0, 1, 9, 10, 15, 16, 99, 100, 255, 256, 4095, 4096, 65535, 65536,
	999999999, 1000000000, 0xabcdef, UINT32_MAX, (uint64_t)UINT32_MAX + 1,
	INT64_MAX, (uint64_t)INT64_MAX + 1, 9999999999999999999ull, 10000000000000000000ull,
	UINT64_MAX,
};

Test(fmt, unsigned_and_signed_decimal)
{
	char got[32], want[32];

	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		size_t n = tpo_fmt_u64(got, vals[i]);
		cr_assert_leq(n, TPO_FMT_U64_MAX);
		got[n] = 0;
		snprintf(want, sizeof(want), "%" PRIu64, vals[i]);
		cr_assert_str_eq(got, want);
		for (int sign = -1; sign <= 1; sign += 2) {
			int64_t v = (int64_t)(vals[i] >> 1) * sign;
			n = tpo_fmt_i64(got, v);
			cr_assert_leq(n, TPO_FMT_I64_MAX);
			got[n] = 0;
			snprintf(want, sizeof(want), "%" PRId64, v);
			cr_assert_str_eq(got, want);
		}
	}
	got[tpo_fmt_i64(got, INT64_MIN)] = 0;
	cr_assert_str_eq(got, "-9223372036854775808");
}

Test(fmt, hex_minimal_and_padded)
{
	char got[32], want[32];

	for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
		got[tpo_fmt_hex(got, vals[i], 0)] = 0;
		snprintf(want, sizeof(want), "%" PRIx64, vals[i]);
		cr_assert_str_eq(got, want);
		got[tpo_fmt_hex(got, vals[i], 16)] = 0;
		snprintf(want, sizeof(want), "%016" PRIx64, vals[i]);
		cr_assert_str_eq(got, want);
		got[tpo_fmt_hex(got, vals[i], 4)] = 0;
		snprintf(want, sizeof(want), "%04" PRIx64, vals[i]);
		cr_assert_str_eq(got, want);
	}
}
