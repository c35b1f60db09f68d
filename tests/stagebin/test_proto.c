/*
 * test_proto.c — the check every stage makes of a REQ, PROMPT or BEGIN
 * record before it follows the lengths inside it (stagebin/proto.h).
 */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "stagebin/proto.h"

/* A record header and a request payload with room for some text after it. */
static _Alignas(8) uint8_t buf[TPO_REC_HDR_SIZE + sizeof(struct tpo_msg_req) + 64];

static struct tpo_rec *rec_with(uint32_t text, uint32_t ctx, uint32_t stop, uint32_t len)
{
	struct tpo_rec *rec = (struct tpo_rec *)buf;
	struct tpo_msg_req *m = tpo_rec_data(rec);

	memset(buf, 0, sizeof(buf));
	rec->type = TPO_MSG_REQ;
	rec->len = len;
	m->text_len = text;
	m->ctx_len = ctx;
	m->stop_len = stop;
	strcpy(m->model, "mock");
	return rec;
}

Test(proto, well_formed_request_passes)
{
	uint32_t hdr = (uint32_t)sizeof(struct tpo_msg_req);

	cr_assert(tpo_msg_req_ok(rec_with(0, 0, 0, hdr)));
	cr_assert(tpo_msg_req_ok(rec_with(40, 16, 8, hdr + 64)));
	/* The model name may use all but the last byte. */
	struct tpo_rec *rec = rec_with(0, 0, 0, hdr);
	struct tpo_msg_req *m = tpo_rec_data(rec);
	memset(m->model, 'x', sizeof(m->model) - 1);
	cr_assert(tpo_msg_req_ok(rec));
}

Test(proto, lengths_that_do_not_add_up_fail)
{
	uint32_t hdr = (uint32_t)sizeof(struct tpo_msg_req);

	cr_assert_not(tpo_msg_req_ok(rec_with(0, 0, 0, hdr - 1)));   /* short */
	cr_assert_not(tpo_msg_req_ok(rec_with(0, 0, 0, 8)));
	cr_assert_not(tpo_msg_req_ok(rec_with(41, 16, 8, hdr + 64))); /* one over */
	cr_assert_not(tpo_msg_req_ok(rec_with(40, 16, 7, hdr + 64))); /* one under */
}

Test(proto, lengths_that_wrap_in_32_bits_fail)
{
	uint32_t hdr = (uint32_t)sizeof(struct tpo_msg_req);
	struct tpo_rec *rec;

	/* 2^31 + 2^31 + 8 wraps to 8: a 32-bit sum says the record is whole,
	 * and the stops would then lie 4 GiB past it. */
	rec = rec_with(0x80000000u, 0x80000000u, 8, hdr + 8);
	cr_assert_eq(tpo_msg_req_size(tpo_rec_data(rec)), hdr + 8, "the sum does wrap");
	cr_assert_not(tpo_msg_req_ok(rec));
	rec = rec_with(0xffffffffu, 1, 0, hdr);
	cr_assert_eq(tpo_msg_req_size(tpo_rec_data(rec)), hdr, "the sum does wrap");
	cr_assert_not(tpo_msg_req_ok(rec));
	rec = rec_with(0, 0, 0xffffff88u + 1, hdr + 1);   /* 120 + 2^32 - 119 */
	cr_assert_not(tpo_msg_req_ok(rec));
}

Test(proto, model_name_without_its_nul_fails)
{
	struct tpo_rec *rec = rec_with(0, 0, 0, (uint32_t)sizeof(struct tpo_msg_req));
	struct tpo_msg_req *m = tpo_rec_data(rec);

	memset(m->model, 'x', sizeof(m->model));
	cr_assert_not(tpo_msg_req_ok(rec));
}
