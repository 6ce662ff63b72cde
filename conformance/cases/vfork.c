/*
 * A child made by vfork, blocked (reading a pipe) while its parent waits
 * in vfork for it: after the move the child reads what is written to it,
 * exits with a status of its own, and the parent goes on from vfork.
 *
 * phaul-refuses: uninterruptible sleep (D)
 * criu-cannot: the parent waiting in vfork for its child sleeps in state D (TASK_KILLABLE, not interruptible): compel cannot seize it ("Unseizable non-zombie found, state D") and CRIU's dump times out
 */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int p[2];
	if (pipe(p) < 0)
		die("pipe");
	/* The writer: once the test says go, it wakes the vfork child. */
	pid_t writer = fork();
	if (writer < 0)
		die("fork");
	if (writer == 0) {
		close(p[0]);
		while (!exists("go"))
			sleep_ms(10);
		write(p[1], "W", 1);
		_exit(0);
	}
	close(p[1]);
	pid_t me = getpid();
	pid_t kid = vfork();
	if (kid < 0)
		die("vfork");
	if (kid == 0) {
		/* Shares the parent's memory and stack: only syscalls here. */
		static const char ready_msg[] = "ready\n";
		char tmp[4096], path[4096];
		snprintf(tmp, sizeof(tmp), "%s/.ready.vfork", corpus_dir);
		snprintf(path, sizeof(path), "%s/ready", corpus_dir);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		write(fd, ready_msg, sizeof(ready_msg) - 1);
		close(fd);
		rename(tmp, path);
		char c = 0;
		ssize_t n = read(p[0], &c, 1);
		_exit(n == 1 && c == 'W' ? (getppid() == me ? 42 : 43) : 44);
	}
	/* Here only once the child has exited. */
	CHECK(exists("go"), "the parent came out of vfork before go");
	int st;
	pid_t got = waitpid(kid, &st, 0);
	CHECK(got == kid, "waitpid(%d) gave %d (%s)", kid, got, strerror(errno));
	if (got == kid) {
		CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 43), "the vfork child's parent changed");
		CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 44), "the vfork child did not read 'W' from its pipe");
		CHECK(WIFEXITED(st) && (WEXITSTATUS(st) == 42 || WEXITSTATUS(st) == 43 || WEXITSTATUS(st) == 44),
		      "the vfork child ended with status %#x", st);
	}
	waitpid(writer, NULL, 0);
	finish();
}
