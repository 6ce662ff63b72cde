/* A child that exited and was not reaped yet is reaped after the move, with its exit status. */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0)
		_exit(7);
	siginfo_t si;
	if (waitid(P_PID, kid, &si, WEXITED | WNOWAIT) < 0)
		die("waitid");
	ready();
	wait_go();
	int st;
	pid_t got = waitpid(kid, &st, WNOHANG);
	CHECK(got == kid, "waitpid(%d) gave %d (%s): the zombie is gone", kid, got, strerror(errno));
	if (got == kid)
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7, "the zombie's status is %#x, not exit 7", st);
	finish();
}
