/*
 * A seccomp filter (BPF) that makes getppid fail with ENOTUNIQ, and
 * prctl(PR_GET_DUMPABLE) with EDOM, other syscalls allowed: after the move
 * the filter is in force (Seccomp: 2, one filter), those two calls fail so
 * and others work; a child forked after the move inherits it.
 */
#include "corpus.h"
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no AUDIT_ARCH for this architecture"
#endif

static char *status_field(const char *field, char *out, size_t n)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	size_t l = strlen(field);
	snprintf(out, n, "(none)");
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, field, l) == 0 && line[l] == ':') {
			char *v = line + l + 1;
			v += strspn(v, " \t");
			v[strcspn(v, "\n")] = 0;
			snprintf(out, n, "%s", v);
		}
	if (f)
		fclose(f);
	return out;
}

/* filtered says what is wrong with the filter as this task sees it, or "". */
static const char *filtered(char *out, size_t n)
{
	errno = 0;
	long r = syscall(SYS_getppid);
	if (r != -1 || errno != ENOTUNIQ) {
		snprintf(out, n, "getppid gave %ld (%s), not ENOTUNIQ", r, strerror(errno));
		return out;
	}
	errno = 0;
	r = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	if (r != -1 || errno != EDOM) {
		snprintf(out, n, "prctl(PR_GET_DUMPABLE) gave %ld (%s), not EDOM", r, strerror(errno));
		return out;
	}
	r = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
	if (r < 0) {
		snprintf(out, n, "prctl(PR_GET_NO_NEW_PRIVS), not filtered, failed: %s", strerror(errno));
		return out;
	}
	if (syscall(SYS_getpid) != getpid()) {
		snprintf(out, n, "getpid fails");
		return out;
	}
	out[0] = 0;
	return out;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOTUNIQ),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_GET_DUMPABLE, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EDOM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { sizeof(code) / sizeof(code[0]), code };
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0)
		die("PR_SET_SECCOMP");
	char why[256];
	if (*filtered(why, sizeof(why)))
		die("the filter does not work: %s", why);
	char mode[64], filters[64];
	status_field("Seccomp", mode, sizeof(mode));
	status_field("Seccomp_filters", filters, sizeof(filters));

	ready();
	wait_go();

	char now[64];
	CHECK(strcmp(status_field("Seccomp", now, sizeof(now)), mode) == 0, "Seccomp is %s, it was %s", now, mode);
	CHECK(strcmp(status_field("Seccomp_filters", now, sizeof(now)), filters) == 0, "Seccomp_filters is %s, it was %s",
	      now, filters);
	CHECK(!*filtered(why, sizeof(why)), "after the move: %s", why);
	int p[2];
	pipe(p);
	pid_t kid = fork();
	if (kid == 0) {
		filtered(why, sizeof(why));
		write(p[1], why, strlen(why) + 1);
		_exit(0);
	}
	close(p[1]);
	char kid_why[256] = "no answer";
	read(p[0], kid_why, sizeof(kid_why) - 1);
	waitpid(kid, NULL, 0);
	CHECK(!*kid_why, "a child forked after the move: %s", kid_why);
	finish();
}
