/*
 * An alternate signal stack, in the main thread and another one in a
 * second thread: sigaltstack reports the same after the move, and a
 * handler with SA_ONSTACK runs on it (SS_ONSTACK, its frame inside it).
 */
#include "corpus.h"
#include <pthread.h>
#include <sys/mman.h>

#define ALT_SIZE (64 * 1024)

static __thread char *volatile handler_frame;
static __thread volatile int handler_flags;

static void on_usr1(int sig)
{
	char here;
	stack_t ss;
	handler_frame = &here;
	asm volatile("" : : "r"(&here) : "memory");
	sigaltstack(NULL, &ss);
	handler_flags = ss.ss_flags;
}

/* check_stack checks this thread's alternate stack against want, and that
 * SIGUSR1 is handled on it. */
static void check_stack(const char *who, const stack_t *want)
{
	stack_t ss;
	if (sigaltstack(NULL, &ss) < 0) {
		fail("%s: sigaltstack: %s", who, strerror(errno));
		return;
	}
	CHECK(ss.ss_sp == want->ss_sp && ss.ss_size == want->ss_size,
	      "%s: the alternate stack is %p+%zu, it was %p+%zu", who, ss.ss_sp, ss.ss_size, want->ss_sp, want->ss_size);
	CHECK(ss.ss_flags == want->ss_flags, "%s: ss_flags are %#x, they were %#x", who, ss.ss_flags, want->ss_flags);
	handler_frame = NULL;
	handler_flags = -1;
	pthread_kill(pthread_self(), SIGUSR1);
	CHECK(handler_frame != NULL, "%s: the SIGUSR1 handler did not run", who);
	char *lo = want->ss_sp, *hi = lo + want->ss_size;
	CHECK(handler_frame >= lo && handler_frame < hi, "%s: the handler ran at %p, not on the alternate stack %p-%p",
	      who, (void *)handler_frame, (void *)lo, (void *)hi);
	CHECK(handler_flags == SS_ONSTACK, "%s: in the handler, ss_flags are %#x, not SS_ONSTACK", who, handler_flags);
}

static stack_t alt_main, alt_thread;
static volatile int thread_state;

static void *thread_main(void *arg)
{
	if (sigaltstack(&alt_thread, NULL) < 0)
		die("sigaltstack in the thread");
	sigaltstack(NULL, &alt_thread);
	thread_state = 1;
	wait_go();
	check_stack("the thread", &alt_thread);
	return NULL;
}

static void *alloc_stack(void)
{
	void *p = mmap(NULL, ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = SA_ONSTACK;
	sigaction(SIGUSR1, &sa, NULL);

	alt_main.ss_sp = alloc_stack();
	alt_main.ss_size = ALT_SIZE;
	if (sigaltstack(&alt_main, NULL) < 0)
		die("sigaltstack");
	sigaltstack(NULL, &alt_main);
	alt_thread.ss_sp = alloc_stack();
	alt_thread.ss_size = ALT_SIZE / 2;
	pthread_t th;
	if (pthread_create(&th, NULL, thread_main, NULL))
		die("pthread_create");
	while (thread_state != 1)
		sleep_ms(1);

	ready();
	wait_go();
	check_stack("the main thread", &alt_main);
	pthread_join(th, NULL);
	finish();
}
