/*
 * A task stopped by a signal (a job suspended with ^Z) stays stopped, with
 * a signal still pending for it; a running one keeps running.
 */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		/* A job of its own, as a shell makes it: its parent is in
		 * another group of the session, so the group is not orphaned
		 * and SIGTSTP stops it. */
		setpgid(0, 0);
		sigset_t usr;
		sigemptyset(&usr);
		sigaddset(&usr, SIGUSR1);
		sigprocmask(SIG_BLOCK, &usr, NULL);
		raise(SIGUSR1); /* pending, blocked */
		raise(SIGTSTP);
		/* Runs only once continued. */
		sigset_t pend;
		sigpending(&pend);
		corpus_write("kid-ran", sigismember(&pend, SIGUSR1) ? "pending\n" : "lost\n");
		for (;;)
			pause();
	}
	int st;
	if (waitpid(kid, &st, WUNTRACED) != kid || !WIFSTOPPED(st))
		die("the child did not stop");
	ready();
	wait_go();
	/* Restored and resumed some time ago: a stopped child has not run. */
	for (int i = 0; i < 20; i++) {
		if (exists("kid-ran"))
			break;
		sleep_ms(10);
	}
	CHECK(!exists("kid-ran"), "the stopped child was resumed by the migration");
	kill(kid, SIGCONT);
	for (int i = 0; i < 500 && !exists("kid-ran"); i++)
		sleep_ms(10);
	CHECK(exists("kid-ran"), "the child does not run after SIGCONT");
	char buf[32] = "";
	read_line("kid-ran", buf, sizeof(buf));
	CHECK(strcmp(buf, "pending\n") == 0, "the child's pending SIGUSR1 was %s", buf);
	kill(kid, SIGKILL);
	finish();
}
