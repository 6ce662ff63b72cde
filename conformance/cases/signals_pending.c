/*
 * Blocked signals pending, for the process and for each thread: standard
 * ones, and real-time ones queued several times with sigqueue values. They
 * are pending after the move where they were (ShdPnd, SigPnd of each
 * thread), and sigtimedwait takes them in the same order with the same
 * values. The dispositions (handlers, SIG_IGN, SA_ flags, sa_mask) are
 * kept, and the handlers run.
 */
#include "corpus.h"
#include <pthread.h>
#include <sys/syscall.h>

#define RT(n) (SIGRTMIN + (n))

static volatile sig_atomic_t usr1_runs, hup_runs;
static void on_usr1(int sig, siginfo_t *si, void *uc) { usr1_runs++; }
static void on_hup(int sig) { hup_runs++; }

/* status_line returns the value of field (e.g. "SigPnd") of a status file. */
static int status_line(const char *file, const char *field, char *out, size_t n)
{
	FILE *f = fopen(file, "r");
	char line[256];
	size_t l = strlen(field);
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, field, l) == 0 && line[l] == ':') {
			char *v = line + l + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			v[strcspn(v, "\n")] = 0;
			snprintf(out, n, "%s", v);
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

/* take checks that sigtimedwait takes sig next from set, with value val
 * (val < 0: a standard signal, no value) and code (ANY_CODE: whichever
 * the kernel gave it). */
#define ANY_CODE 12345
static void take(const char *who, sigset_t *set, int sig, int code, int val)
{
	siginfo_t si;
	struct timespec zero = { 0, 0 };
	int got = sigtimedwait(set, &si, &zero);
	if (got != sig) {
		fail("%s: sigtimedwait took %d (%s), %d was due", who, got, got < 0 ? strerror(errno) : "", sig);
		return;
	}
	if (code != ANY_CODE)
		CHECK(si.si_code == code, "%s: signal %d has si_code %d, not %d", who, sig, si.si_code, code);
	CHECK(si.si_pid == getpid(), "%s: signal %d has si_pid %d, not %d", who, sig, si.si_pid, getpid());
	if (val >= 0)
		CHECK(si.si_value.sival_int == val, "%s: signal %d has the value %d, not %d", who, sig,
		      si.si_value.sival_int, val);
}

static sigset_t thread_set; /* the thread's own signals */
static pid_t thread_tid;
static char thread_pnd[64], thread_blk[64];
static volatile int thread_up;

static void *thread_main(void *arg)
{
	sigset_t mask;
	pthread_sigmask(SIG_BLOCK, &thread_set, NULL);
	pthread_sigmask(SIG_SETMASK, NULL, &mask);
	thread_tid = syscall(SYS_gettid);
	__sync_synchronize();
	thread_up = 1;
	while (thread_up != 2)
		sleep_ms(1);
	/* The main thread has sent the thread its signals. */
	if (!status_line("/proc/thread-self/status", "SigPnd", thread_pnd, sizeof(thread_pnd)) ||
	    !status_line("/proc/thread-self/status", "SigBlk", thread_blk, sizeof(thread_blk)))
		die("read /proc/thread-self/status");
	thread_up = 3;
	wait_go();
	char pnd[64] = "?", blk[64] = "?";
	status_line("/proc/thread-self/status", "SigPnd", pnd, sizeof(pnd));
	status_line("/proc/thread-self/status", "SigBlk", blk, sizeof(blk));
	CHECK(strcmp(pnd, thread_pnd) == 0, "the thread's own pending signals (SigPnd) are %s, they were %s", pnd, thread_pnd);
	CHECK(strcmp(blk, thread_blk) == 0, "the thread's mask (SigBlk) is %s, it was %s", blk, thread_blk);
	sigset_t now;
	pthread_sigmask(SIG_SETMASK, NULL, &now);
	for (int s = 1; s < NSIG; s++)
		CHECK(sigismember(&now, s) == sigismember(&mask, s), "the thread's mask for signal %d changed", s);
	take("thread", &thread_set, SIGINT, ANY_CODE, -1);
	take("thread", &thread_set, RT(3), SI_QUEUE, 55);
	take("thread", &thread_set, RT(3), SI_QUEUE, 66);
	siginfo_t si;
	struct timespec zero = { 0, 0 };
	int extra = sigtimedwait(&thread_set, &si, &zero);
	CHECK(extra < 0, "the thread has signal %d pending too", extra);
	return NULL;
}

struct disp {
	int sig;
	struct sigaction sa;
};

int main(int argc, char **argv)
{
	corpus_init(argc, argv);

	/* Dispositions. */
	struct disp d[] = { { SIGUSR1 }, { SIGUSR2 }, { SIGHUP }, { SIGPIPE }, { SIGCHLD }, { RT(5) } };
	int nd = sizeof(d) / sizeof(d[0]);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_usr1;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, RT(7));
	sigaction(SIGUSR1, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_IGN;
	sigaction(SIGUSR2, &sa, NULL);
	sigaction(SIGPIPE, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_hup;
	sa.sa_flags = SA_NODEFER | SA_RESETHAND;
	sigaction(SIGHUP, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = SIG_DFL;
	sa.sa_flags = SA_NOCLDSTOP | SA_NOCLDWAIT;
	sigaction(SIGCHLD, &sa, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_hup;
	sa.sa_flags = SA_ONSTACK;
	sigaddset(&sa.sa_mask, SIGQUIT);
	sigaction(RT(5), &sa, NULL);
	for (int i = 0; i < nd; i++)
		sigaction(d[i].sig, NULL, &d[i].sa);

	/* Blocked in every thread: the process's signals. */
	sigset_t proc_set;
	sigemptyset(&proc_set);
	sigaddset(&proc_set, SIGUSR1);
	sigaddset(&proc_set, SIGTERM);
	sigaddset(&proc_set, RT(1));
	sigaddset(&proc_set, RT(2));
	sigprocmask(SIG_BLOCK, &proc_set, NULL);
	/* Blocked in the thread only: its own. */
	sigemptyset(&thread_set);
	sigaddset(&thread_set, SIGINT);
	sigaddset(&thread_set, RT(3));
	pthread_t th;
	if (pthread_create(&th, NULL, thread_main, NULL))
		die("pthread_create");
	while (thread_up != 1)
		sleep_ms(1);

	/* Pending for the process (shared): SIGTERM, RT1 three times, RT2. */
	union sigval v;
	kill(getpid(), SIGTERM);
	v.sival_int = 11, sigqueue(getpid(), RT(1), v);
	v.sival_int = 22, sigqueue(getpid(), RT(1), v);
	v.sival_int = 33, sigqueue(getpid(), RT(1), v);
	v.sival_int = 44, sigqueue(getpid(), RT(2), v);
	/* Pending for the main thread: SIGUSR1, from raise (tgkill). */
	raise(SIGUSR1);
	/* Pending for the thread: SIGINT (pthread_kill), RT3 twice with values. */
	if (pthread_kill(th, SIGINT))
		die("pthread_kill");
	for (int val = 55; val <= 66; val += 11) {
		siginfo_t si;
		memset(&si, 0, sizeof(si));
		si.si_signo = RT(3);
		si.si_code = SI_QUEUE;
		si.si_pid = getpid();
		si.si_uid = getuid();
		si.si_value.sival_int = val;
		if (syscall(SYS_rt_tgsigqueueinfo, getpid(), thread_tid, RT(3), &si) < 0)
			die("rt_tgsigqueueinfo");
	}
	thread_up = 2;
	while (thread_up != 3)
		sleep_ms(1);

	char shd[64], pnd[64], blk[64];
	if (!status_line("/proc/self/status", "ShdPnd", shd, sizeof(shd)) ||
	    !status_line("/proc/thread-self/status", "SigPnd", pnd, sizeof(pnd)) ||
	    !status_line("/proc/thread-self/status", "SigBlk", blk, sizeof(blk)))
		die("read /proc/self/status");
	if (strcmp(shd, "0000000000000000") == 0 || strcmp(pnd, "0000000000000000") == 0 ||
	    strcmp(thread_pnd, "0000000000000000") == 0)
		die("the signals are not pending: ShdPnd %s, SigPnd %s, the thread's %s", shd, pnd, thread_pnd);

	ready();
	wait_go();

	char now[64] = "?";
	status_line("/proc/self/status", "ShdPnd", now, sizeof(now));
	CHECK(strcmp(now, shd) == 0, "the process's pending signals (ShdPnd) are %s, they were %s", now, shd);
	status_line("/proc/thread-self/status", "SigPnd", now, sizeof(now));
	CHECK(strcmp(now, pnd) == 0, "the main thread's own pending signals (SigPnd) are %s, they were %s", now, pnd);
	status_line("/proc/thread-self/status", "SigBlk", now, sizeof(now));
	CHECK(strcmp(now, blk) == 0, "the main thread's mask (SigBlk) is %s, it was %s", now, blk);
	sigset_t pending;
	sigpending(&pending);
	for (int s = 1; s < NSIG; s++) {
		int want = sigismember(&proc_set, s);
		CHECK(sigismember(&pending, s) == want, "sigpending: signal %d is %s", s, want ? "not pending" : "pending");
	}
	CHECK(usr1_runs == 0, "the SIGUSR1 handler ran, with SIGUSR1 blocked");

	/* The thread takes its own; the main thread takes its own first (SIGUSR1), then the process's. */
	pthread_join(th, NULL);
	take("main thread", &proc_set, SIGUSR1, ANY_CODE, -1);
	take("process", &proc_set, SIGTERM, SI_USER, -1);
	take("process", &proc_set, RT(1), SI_QUEUE, 11);
	take("process", &proc_set, RT(1), SI_QUEUE, 22);
	take("process", &proc_set, RT(1), SI_QUEUE, 33);
	take("process", &proc_set, RT(2), SI_QUEUE, 44);
	siginfo_t si;
	struct timespec zero = { 0, 0 };
	int extra = sigtimedwait(&proc_set, &si, &zero);
	CHECK(extra < 0, "signal %d is pending too", extra);

	/* The dispositions. */
	for (int i = 0; i < nd; i++) {
		struct sigaction got;
		sigaction(d[i].sig, NULL, &got);
		CHECK(got.sa_handler == d[i].sa.sa_handler, "signal %d: the handler is %p, it was %p", d[i].sig,
		      (void *)got.sa_handler, (void *)d[i].sa.sa_handler);
		CHECK(got.sa_flags == d[i].sa.sa_flags, "signal %d: sa_flags are %#x, they were %#x", d[i].sig,
		      got.sa_flags, d[i].sa.sa_flags);
		for (int s = 1; s < NSIG; s++)
			CHECK(sigismember(&got.sa_mask, s) == sigismember(&d[i].sa.sa_mask, s),
			      "signal %d: sa_mask for signal %d changed", d[i].sig, s);
	}
	/* And they work: SIGUSR1 unblocked runs its handler; SIGUSR2 is
	 * ignored; SIGHUP runs its handler once, then is reset. */
	v.sival_int = 1;
	sigqueue(getpid(), SIGUSR1, v);
	sigprocmask(SIG_UNBLOCK, &proc_set, NULL);
	CHECK(usr1_runs == 1, "the SIGUSR1 handler ran %d times, not once", (int)usr1_runs);
	kill(getpid(), SIGUSR2);
	kill(getpid(), SIGHUP);
	CHECK(hup_runs == 1, "the SIGHUP handler ran %d times, not once", (int)hup_runs);
	struct sigaction hup;
	sigaction(SIGHUP, NULL, &hup);
	CHECK(hup.sa_handler == SIG_DFL, "SIGHUP was not reset after its handler ran (SA_RESETHAND)");
	finish();
}
