# tpo — one non-recursive Makefile.  `make` builds into build/; see README.md.
#
#   make            build everything
#   make run        build, then run the supervisor on the embedded default
#   make test       every test (unit, integration, stress), then the ASan,
#                   TSan and fuzz runs
#   make asan       the test suite under ASan+UBSan (build/asan/)
#   make tsan       the concurrency stress programs under TSan (build/tsan/)
#   make fuzz       libFuzzer targets (clang) over the parsers of untrusted
#                   input, built into build/fuzz/; tests/fuzz/run runs them
#   make bench      benchmarks; results in bench/results/ (not part of CI);
#                   UPSTREAM=URL adds the overhead scenario against that
#                   OpenAI-compatible server (docs/bench.md)

BUILD   ?= build
CC      ?= cc
SAN     ?=
PKGS    := libcurl libsystemd hwloc ncursesw
OPT     ?= -O2 -g
CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-missing-field-initializers \
           -I. $(OPT) $(SAN) $(EXTRA_CFLAGS)
LDLIBS  := -lhttp_parser -lpthread -lm
# Record only the libraries a binary uses, whatever the compiler's default
# (Debian's gcc drops --as-needed under -fsanitize): libcurl is dlopen()ed by
# workers/curl_dl.c, so no binary should depend on it (tests check).
LDFLAGS := -Wl,--as-needed

# Dependencies are resolved (and installed if missing) once per make run.
DEPS_OK := $(shell ./tools/install-deps >&2 && echo ok)
ifneq ($(DEPS_OK),ok)
$(error tools/install-deps failed: see the messages above)
endif
CFLAGS  += $(shell pkg-config --cflags $(PKGS))
LDLIBS  := $(shell pkg-config --libs $(PKGS)) $(LDLIBS)
CRIT    := $(shell pkg-config --libs criterion)

STAGES  := stream rag assemble infer post
TOOLS   := tpo-top tpo-bench

LIB_SRC := $(wildcard shm/*.c) \
           $(filter-out supervisor/main.c,$(wildcard supervisor/*.c)) \
           $(filter-out $(STAGES:%=stagebin/%.c),$(wildcard stagebin/*.c)) \
           $(wildcard workers/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
LIB     := $(BUILD)/libtpo.a

SUP_BIN   := $(if $(wildcard supervisor/main.c),$(BUILD)/tpo-supervisor)
STAGE_BIN := $(foreach s,$(STAGES),$(if $(wildcard stagebin/$(s).c),$(BUILD)/tpo-$(s)))
TOOL_BIN  := $(foreach t,$(TOOLS),$(if $(wildcard tools/$(t).c),$(BUILD)/$(t)))
PLUGINS   := $(patsubst workers/plugins/%.c,$(BUILD)/plugins/%.so,$(wildcard workers/plugins/*.c))

UNIT_SRC   := $(wildcard tests/*/test_*.c)
UNIT_BIN   := $(UNIT_SRC:%.c=$(BUILD)/%)
STRESS_SRC := $(wildcard tests/stress/*.c)
STRESS_BIN := $(STRESS_SRC:%.c=$(BUILD)/%)
BENCH_SRC  := $(wildcard bench/*.c)
BENCH_BIN  := $(BENCH_SRC:%.c=$(BUILD)/%)

ALL := $(LIB) $(SUP_BIN) $(STAGE_BIN) $(TOOL_BIN) $(PLUGINS) $(UNIT_BIN) $(STRESS_BIN) $(BENCH_BIN)

.PHONY: all run test unit asan tsan fuzz bench clean
.SECONDARY:
all: $(ALL)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/tpo-supervisor: $(BUILD)/obj/supervisor/main.o $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tpo-%: $(BUILD)/obj/stagebin/%.o $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tpo-%: $(BUILD)/obj/tools/tpo-%.o $(LIB)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/plugins/%.so: workers/plugins/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fPIC -shared -o $@ $<
$(BUILD)/tests/stress/%: $(BUILD)/obj/tests/stress/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)
$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(CRIT) $(LDLIBS)
$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)

run: $(LIB) $(SUP_BIN) $(STAGE_BIN) $(TOOL_BIN) $(PLUGINS)
	@./tools/run-default $(BUILD)

# Every test: unit and integration (Criterion), then stress programs, then
# the whole again under ASan+UBSan.  tests/run prints "N passed, N failed".
TALLY := $(CURDIR)/build/test-tally
test: all
	./tools/install-deps --test
	@rm -f $(TALLY)
	TPO_TALLY=$(TALLY) ./tests/run $(BUILD)
	TPO_TALLY=$(TALLY) $(MAKE) --no-print-directory asan
	TPO_TALLY=$(TALLY) $(MAKE) --no-print-directory tsan
	$(MAKE) --no-print-directory fuzz
	TPO_TALLY=$(TALLY) ./tests/fuzz/run build/fuzz
	@awk '{p += $$1; f += $$2} END {printf "total: %d passed, %d failed\n", p, f}' $(TALLY)

unit: all
	./tests/run $(BUILD)

asan:
	$(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g" \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    TPO_SANITIZED=1 ./tests/run build/asan

tsan:
	$(MAKE) --no-print-directory BUILD=build/tsan OPT="-O1 -g" SAN="-fsanitize=thread" \
	    $(patsubst $(BUILD)/%,build/tsan/%,$(STRESS_BIN))
	TSAN_OPTIONS=halt_on_error=1 TPO_SANITIZED=1 ./tests/run build/tsan --stress-only

# The fuzz targets and everything they link, instrumented for libFuzzer
# with ASan+UBSan (clang: tools/install-deps --test installs it).
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined
fuzz: $(FUZZ_BIN)
build/fuzz/obj/%.o: %.c
	@mkdir -p $(@D)
	@echo "clang (fuzz) $<"
	@clang $(filter-out $(OPT) $(SAN),$(CFLAGS)) -O1 -g $(FUZZ_SAN) -fsanitize=fuzzer-no-link \
	    -MMD -MP -c $< -o $@
# Only the modules the targets reach (what make test spends compiling).
FUZZ_LIB := workers/json.c workers/jsmn_impl.c workers/sse.c workers/h1.c \
            stagebin/openai.c stagebin/textproc.c stagebin/http.c supervisor/config.c \
            shm/ring.c
build/fuzz/libtpo.a: $(FUZZ_LIB:%.c=build/fuzz/obj/%.o)
	rm -f $@ && ar rcs $@ $^
build/fuzz/fuzz_%: build/fuzz/obj/tests/fuzz/fuzz_%.o build/fuzz/libtpo.a
	clang $(FUZZ_SAN) -fsanitize=fuzzer $(LDFLAGS) -o $@ $^ $(LDLIBS)

UPSTREAM ?=

bench: all
	./bench/run $(BUILD) $(UPSTREAM)

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
-include $(shell find build/fuzz/obj -name '*.d' 2>/dev/null)
