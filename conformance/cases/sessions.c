/*
 * A session, and a process group, whose leaders have exited while other
 * tasks live on in them.
 */
#include "corpus.h"

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	int p[2];
	if (pipe(p) < 0)
		die("pipe");
	pid_t leader = fork();
	if (leader < 0)
		die("fork");
	if (leader == 0) {
		/* A new session, and in it a process group led by a task
		 * that exits too. */
		pid_t sid = setsid();
		pid_t member = fork();
		if (member == 0) {
			pid_t pg = fork();
			if (pg == 0) {
				setpgid(0, 0);
				pid_t other = fork();
				if (other == 0) {
					pid_t ids[2] = { getsid(0), getpgid(0) };
					write(p[1], ids, sizeof(ids));
					close(p[1]);
					while (!exists("go"))
						sleep_ms(10);
					char buf[128] = "ok\n";
					if (getsid(0) != ids[0] || getpgid(0) != ids[1])
						snprintf(buf, sizeof(buf), "session %d, group %d; they were %d, %d\n",
							 getsid(0), getpgid(0), ids[0], ids[1]);
					corpus_write("member", buf);
					_exit(0);
				}
				_exit(0); /* the group's leader exits */
			}
			waitpid(pg, NULL, 0);
			for (;;)
				pause(); /* a member of the session */
		}
		(void)sid;
		_exit(0); /* the session's leader exits */
	}
	close(p[1]);
	pid_t ids[2];
	if (read(p[0], ids, sizeof(ids)) != sizeof(ids))
		die("read the member's ids");
	waitpid(leader, NULL, 0);
	ready();
	wait_go();
	for (int i = 0; i < 500 && !exists("member"); i++)
		sleep_ms(10);
	char buf[128] = "no answer\n";
	read_line("member", buf, sizeof(buf));
	CHECK(strcmp(buf, "ok\n") == 0, "the member of the session: %s", buf);
	finish();
}
