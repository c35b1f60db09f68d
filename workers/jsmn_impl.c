/*
 * jsmn_impl.c — the one translation unit that compiles jsmn's functions.
 * Every other file includes <jsmn.h> after #define JSMN_HEADER.
 */
#include <jsmn.h>
