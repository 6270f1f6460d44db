/* runner: runs the C tests of the core and reports them as TAP.
 *
 * With no argument every test in test-list.h runs, in its order; with
 * arguments only the tests named, in the order given. Each prints
 * `ok N - name` or `not ok N - name`, failures preceded by their `# `
 * diagnostic lines, and the plan `1..N` comes last. The exit status is 1 if
 * any test failed or a name was unknown (reported as a failed test), so
 * CI sees every failure.
 *
 * The trap: a test's stdout and the runner's share one stream; it is
 * flushed after each test so that a crash mid-test still leaves every
 * earlier result on record.
 */
#include <stdio.h>
#include <string.h>

#include "test-list.h"

typedef struct {
  const char *name;
  int (*run)(void);
} test_entry_t;

#define XX(name) int run_test_##name(void);
TEST_LIST(XX)
#undef XX

static const test_entry_t tests[] = {
#define XX(name) {#name, run_test_##name},
  TEST_LIST(XX)
#undef XX
};

#define TEST_COUNT (sizeof(tests) / sizeof(tests[0]))

static const test_entry_t *find_test(const char *name) {
  size_t i;

  for (i = 0; i < TEST_COUNT; i++)
    if (strcmp(tests[i].name, name) == 0)
      return &tests[i];
  return NULL;
}

static int run_one(const test_entry_t *t, unsigned n) {
  int failed;

  failed = t->run() != 0;
  printf("%sok %u - %s\n", failed ? "not " : "", n, t->name);
  fflush(stdout);
  return failed;
}

int main(int argc, char **argv) {
  unsigned n;
  int failed;

  n = 0;
  failed = 0;
  if (argc < 2) {
    for (n = 0; n < TEST_COUNT; n++)
      failed |= run_one(&tests[n], n + 1);
  } else {
    for (int i = 1; i < argc; i++) {
      const test_entry_t *t = find_test(argv[i]);

      if (t == NULL) {
        /* A misspelt name must fail the run, not pass it with one test
         * fewer. */
        printf("# no such test\nnot ok %u - %s\n", ++n, argv[i]);
        failed = 1;
        continue;
      }
      failed |= run_one(t, ++n);
    }
  }
  printf("1..%u\n", n);
  return failed ? 1 : 0;
}
