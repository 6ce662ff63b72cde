/*
 * Blocked signals pending, read through a signalfd after the move:
 * SIGUSR1 sent to the thread, SIGUSR2 to the process, and SIGRTMIN+1 queued
 * twice with values by sigqueue. SIGTERM is pending too but is not in the
 * signalfd's mask: it is not read through it, and stays pending.
 */
#include "corpus.h"
#include <sys/signalfd.h>

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int rt = SIGRTMIN + 1;
	sigset_t all, mask;
	sigemptyset(&all);
	sigaddset(&all, SIGUSR1);
	sigaddset(&all, SIGUSR2);
	sigaddset(&all, SIGTERM);
	sigaddset(&all, rt);
	sigprocmask(SIG_BLOCK, &all, NULL);
	mask = all;
	sigdelset(&mask, SIGTERM);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK);
	if (sfd < 0)
		die("signalfd");
	raise(SIGUSR1);
	kill(getpid(), SIGUSR2);
	kill(getpid(), SIGTERM);
	if (sigqueue(getpid(), rt, (union sigval){ .sival_int = 1234 }) < 0 ||
	    sigqueue(getpid(), rt, (union sigval){ .sival_int = 5678 }) < 0)
		die("sigqueue");
	ready();
	wait_go();
	int usr1 = 0, usr2 = 0, term = 0, nrt = 0, other = 0;
	int vals[2] = { 0, 0 };
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGUSR1)
			usr1++;
		else if (si.ssi_signo == SIGUSR2)
			usr2++;
		else if (si.ssi_signo == SIGTERM)
			term++;
		else if ((int)si.ssi_signo == rt && nrt < 2)
			vals[nrt++] = si.ssi_int;
		else
			other++;
	}
	CHECK(errno == EAGAIN, "read the signalfd: %s", strerror(errno));
	CHECK(usr1 == 1, "SIGUSR1 (sent to the thread) read %d times through the signalfd, not once", usr1);
	CHECK(usr2 == 1, "SIGUSR2 (sent to the process) read %d times through the signalfd, not once", usr2);
	CHECK(nrt == 2 && vals[0] == 1234 && vals[1] == 5678, "SIGRTMIN+1 read %d times, values %d %d, not 1234 5678", nrt,
	      vals[0], vals[1]);
	CHECK(term == 0, "SIGTERM, not in the signalfd's mask, was read through it");
	CHECK(other == 0, "%d signals more read through the signalfd", other);
	sigset_t pend;
	sigpending(&pend);
	CHECK(sigismember(&pend, SIGTERM), "SIGTERM is no longer pending");
	CHECK(!sigismember(&pend, SIGUSR1) && !sigismember(&pend, SIGUSR2), "SIGUSR1 or SIGUSR2 still pending once read");
	raise(SIGUSR1);
	CHECK(read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == SIGUSR1,
	      "a SIGUSR1 raised after the move is not read through the signalfd");
	finish();
}
