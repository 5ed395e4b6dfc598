/*
 * Preloaded into a child process by test/15-thread-pool.test.ts: once the
 * environment variable FAIL_PTHREAD_CREATE_AFTER=n is set, pthread_create lets
 * n more threads start and then fails with EAGAIN, as it does under `ulimit -u`
 * (which does not bind root, so it cannot be relied on in CI containers).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

typedef int (*CreateFunction)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);

static int startedSinceArmed = 0;

int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                   void* arg) {
  static CreateFunction real = NULL;
  if (!real) real = (CreateFunction)dlsym(RTLD_NEXT, "pthread_create");
  const char* budget = getenv("FAIL_PTHREAD_CREATE_AFTER");
  if (!budget) {
    startedSinceArmed = 0;
  } else if (startedSinceArmed++ >= atoi(budget)) {
    return EAGAIN;
  }
  return real(thread, attr, start, arg);
}
