/*
 * A parent with a running child, SIGCHLD blocked: the move is no event of
 * the child's. No SIGCHLD becomes pending, and waitpid reports no stop
 * and no continue of the child.
 *
 * phaul holds the restored tree in a freezer cgroup of its own until the
 * commit (the tree sees nothing). It held it with SIGSTOP and SIGCONT
 * before, and a parent saw its children stop and continue; a host with
 * no cgroup v1 freezer still does (phaul migrate's report says "held
 * stopped").
 */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		for (;;)
			pause();
	}
	ready();
	wait_go();
	sigset_t pend;
	sigpending(&pend);
	CHECK(!sigismember(&pend, SIGCHLD), "SIGCHLD is pending: the child changed state during the move");
	int st;
	pid_t got = waitpid(kid, &st, WNOHANG | WUNTRACED | WCONTINUED);
	CHECK(got == 0, "waitpid reports an event of the child: %s",
	      got == kid ? (WIFSTOPPED(st) ? "stopped" : WIFCONTINUED(st) ? "continued" : "exited") : strerror(errno));
	kill(kid, SIGKILL);
	finish();
}
