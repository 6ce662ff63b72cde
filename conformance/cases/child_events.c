/*
 * A parent with a running child, SIGCHLD blocked: the move is no event of
 * the child's. No SIGCHLD becomes pending, and waitpid reports no stop
 * and no continue of the child.
 *
 * phaul-differs: the destination restores the tree stopped (CRIU's leave_stopped sends every task SIGSTOP) and resumes it with SIGCONT, so a parent sees its children stop and continue (SIGCHLD pending, waitpid WUNTRACED/WCONTINUED events); CRIU alone resumes by ptrace, unseen. The fix is to hold the restored tree in a frozen cgroup instead (CRIU's own freezer.state restore, which works here), see the README
 * phaul-says: SIGCHLD is pending: the child changed state during the move
 * phaul-says: waitpid reports an event of the child: continued
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
