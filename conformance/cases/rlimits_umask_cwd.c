/*
 * Resource limits (RLIMIT_NOFILE soft, RLIMIT_CORE, RLIMIT_STACK soft,
 * RLIMIT_MSGQUEUE), the umask (027) and the working directory (a
 * subdirectory of DIR): after the move all the same, and files made
 * have the umask's mode.
 */
#include "corpus.h"
#include <sys/resource.h>

struct lim {
	int res;
	const char *name;
	struct rlimit want;
};

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct lim l[] = {
		{ RLIMIT_NOFILE, "RLIMIT_NOFILE" },
		{ RLIMIT_CORE, "RLIMIT_CORE" },
		{ RLIMIT_STACK, "RLIMIT_STACK" },
		{ RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE" },
	};
	int nl = sizeof(l) / sizeof(l[0]);
	for (int i = 0; i < nl; i++)
		getrlimit(l[i].res, &l[i].want);
	l[0].want.rlim_cur = 321;
	l[1].want.rlim_cur = 4096 * 5;
	l[1].want.rlim_max = 4096 * 7;
	l[2].want.rlim_cur = 3 << 20;
	l[3].want.rlim_cur = l[3].want.rlim_max = 123456;
	for (int i = 0; i < nl; i++)
		if (setrlimit(l[i].res, &l[i].want) < 0)
			die("setrlimit %s", l[i].name);
	umask(027);
	char sub[4096];
	snprintf(sub, sizeof(sub), "%s/work", corpus_dir);
	mkdir(sub, 0755);
	snprintf(sub, sizeof(sub), "%s/work/here", corpus_dir);
	mkdir(sub, 0755);
	if (chdir(sub) < 0)
		die("chdir");
	char cwd[4096];
	if (!getcwd(cwd, sizeof(cwd)))
		die("getcwd");
	struct stat cwd_st;
	stat(".", &cwd_st);

	ready();
	wait_go();

	for (int i = 0; i < nl; i++) {
		struct rlimit got;
		getrlimit(l[i].res, &got);
		CHECK(got.rlim_cur == l[i].want.rlim_cur && got.rlim_max == l[i].want.rlim_max,
		      "%s is %llu/%llu, it was %llu/%llu", l[i].name, (unsigned long long)got.rlim_cur,
		      (unsigned long long)got.rlim_max, (unsigned long long)l[i].want.rlim_cur,
		      (unsigned long long)l[i].want.rlim_max);
	}
	mode_t m = umask(027);
	CHECK(m == 027, "the umask is %03o, it was 027", m);
	int fd = open("made-after", O_WRONLY | O_CREAT | O_EXCL, 0666);
	struct stat st;
	CHECK(fd >= 0 && fstat(fd, &st) == 0 && (st.st_mode & 0777) == 0640,
	      "a file made after the move in the working directory: %s, mode %03o, not 0640",
	      fd < 0 ? strerror(errno) : "made", fd < 0 ? 0 : st.st_mode & 0777);
	char now[4096] = "";
	getcwd(now, sizeof(now));
	CHECK(strcmp(now, cwd) == 0, "the working directory is %s, it was %s", now, cwd);
	struct stat dot;
	stat(".", &dot);
	CHECK(dot.st_dev == cwd_st.st_dev && dot.st_ino == cwd_st.st_ino, "the working directory is another directory than %s", cwd);
	snprintf(sub, sizeof(sub), "%s/work/here/made-after", corpus_dir);
	CHECK(access(sub, F_OK) == 0, "a file made in the working directory is not in %s/work/here", corpus_dir);
	finish();
}
