/*
 * Several threads, each with its own signal mask, its own __thread value
 * and its own name (PR_SET_NAME): after the move each thread has the same
 * TID, mask, TLS value and name, as have the main thread's.
 */
#include "corpus.h"
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define NTHREADS 4

static __thread int tls_value = -1;
static __thread char tls_text[32];

struct worker {
	int n;
	pthread_t th;
	pid_t tid;
	sigset_t mask;
	char name[16];
	volatile int up;
	char result[1024];
};

/* me checks the calling thread against w, into w->result. */
static void me(struct worker *w, int value)
{
	char *r = w->result;
	size_t n = sizeof(w->result);
#define NOTE(...) do { size_t _l = strlen(r); snprintf(r + _l, n - _l, __VA_ARGS__); } while (0)
	pid_t tid = syscall(SYS_gettid);
	if (tid != w->tid)
		NOTE("thread %d: its TID is %d, it was %d; ", w->n, tid, w->tid);
	if (tls_value != value)
		NOTE("thread %d: its __thread int is %d, not %d; ", w->n, tls_value, value);
	char text[32];
	snprintf(text, sizeof(text), "tls of %d", value);
	if (strcmp(tls_text, text) != 0)
		NOTE("thread %d: its __thread text is \"%s\", not \"%s\"; ", w->n, tls_text, text);
	char name[16] = "";
	prctl(PR_GET_NAME, name);
	if (strcmp(name, w->name) != 0)
		NOTE("thread %d: its name is \"%s\", not \"%s\"; ", w->n, name, w->name);
	char comm[32] = "";
	FILE *f = fopen("/proc/thread-self/comm", "r");
	if (f) {
		fgets(comm, sizeof(comm), f);
		fclose(f);
	}
	comm[strcspn(comm, "\n")] = 0;
	if (strcmp(comm, w->name) != 0)
		NOTE("thread %d: /proc/thread-self/comm is \"%s\", not \"%s\"; ", w->n, comm, w->name);
	sigset_t mask;
	pthread_sigmask(SIG_SETMASK, NULL, &mask);
	for (int s = 1; s < NSIG; s++)
		if (sigismember(&mask, s) != sigismember(&w->mask, s))
			NOTE("thread %d: signal %d is %s; ", w->n, s, sigismember(&mask, s) ? "blocked" : "not blocked");
#undef NOTE
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	tls_value = 1000 + w->n;
	snprintf(tls_text, sizeof(tls_text), "tls of %d", tls_value);
	prctl(PR_SET_NAME, w->name);
	pthread_sigmask(SIG_SETMASK, &w->mask, NULL);
	w->tid = syscall(SYS_gettid);
	__sync_synchronize();
	w->up = 1;
	wait_go();
	me(w, 1000 + w->n);
	return NULL;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	static struct worker w[NTHREADS + 1]; /* w[0] is the main thread */
	for (int i = 1; i <= NTHREADS; i++) {
		w[i].n = i;
		snprintf(w[i].name, sizeof(w[i].name), "worker-%d", i);
		sigemptyset(&w[i].mask);
		sigaddset(&w[i].mask, SIGRTMIN + i);
		sigaddset(&w[i].mask, i % 2 ? SIGUSR1 : SIGUSR2);
		if (i == NTHREADS) {
			sigfillset(&w[i].mask); /* all that can be */
			sigdelset(&w[i].mask, SIGKILL);
			sigdelset(&w[i].mask, SIGSTOP);
			sigdelset(&w[i].mask, SIGHUP);
		}
		if (pthread_create(&w[i].th, NULL, worker_main, &w[i]))
			die("pthread_create");
	}
	/* The main thread: its own too. */
	w[0].n = 0;
	strcpy(w[0].name, "main-thread");
	prctl(PR_SET_NAME, w[0].name);
	tls_value = 1000;
	snprintf(tls_text, sizeof(tls_text), "tls of %d", tls_value);
	sigemptyset(&w[0].mask);
	sigaddset(&w[0].mask, SIGTERM);
	sigprocmask(SIG_SETMASK, &w[0].mask, NULL);
	w[0].tid = getpid();
	for (int i = 1; i <= NTHREADS; i++)
		while (!w[i].up)
			sleep_ms(1);

	ready();
	wait_go();
	me(&w[0], 1000);
	for (int i = 0; i <= NTHREADS; i++) {
		if (i > 0)
			pthread_join(w[i].th, NULL);
		CHECK(w[i].result[0] == 0, "%s", w[i].result);
	}
	finish();
}
