/*
 * Capabilities dropped: some from the bounding set (PR_CAPBSET_DROP), some
 * from the permitted and effective sets (capset), one raised into the
 * inheritable and ambient sets; and no_new_privs set. After the move the
 * same sets (CapInh, CapPrm, CapEff, CapBnd, CapAmb and NoNewPrivs of
 * /proc/self/status, and capget), and what was dropped stays dropped.
 */
#include "corpus.h"
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static const char *fields[] = { "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs" };
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static void read_status(char out[][64])
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	for (size_t i = 0; i < NFIELDS; i++)
		strcpy(out[i], "(none)");
	while (f && fgets(line, sizeof(line), f))
		for (size_t i = 0; i < NFIELDS; i++) {
			size_t l = strlen(fields[i]);
			if (strncmp(line, fields[i], l) == 0 && line[l] == ':') {
				char *v = line + l + 1;
				v += strspn(v, " \t");
				v[strcspn(v, "\n")] = 0;
				snprintf(out[i], 64, "%s", v);
			}
		}
	if (f)
		fclose(f);
}

static void caps_get(struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	if (syscall(SYS_capget, &h, d) < 0)
		die("capget");
}

#define BIT(c) (1u << ((c) % 32))
#define WORD(c) ((c) / 32)

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	/* Out of the bounding set. */
	int bnd[] = { CAP_SYS_BOOT, CAP_SYS_TIME, CAP_WAKE_ALARM };
	for (size_t i = 0; i < sizeof(bnd) / sizeof(bnd[0]); i++)
		if (prctl(PR_CAPBSET_DROP, bnd[i], 0, 0, 0) < 0)
			die("PR_CAPBSET_DROP %d", bnd[i]);
	/* CAP_MKNOD out of the permitted set (so the effective too),
	 * CAP_NET_RAW out of the effective set only, CAP_KILL inheritable
	 * and ambient. */
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];
	caps_get(d);
	d[WORD(CAP_MKNOD)].permitted &= ~BIT(CAP_MKNOD);
	d[WORD(CAP_MKNOD)].effective &= ~BIT(CAP_MKNOD);
	d[WORD(CAP_NET_RAW)].effective &= ~BIT(CAP_NET_RAW);
	d[WORD(CAP_KILL)].inheritable |= BIT(CAP_KILL);
	d[WORD(CAP_AUDIT_READ)].permitted &= ~BIT(CAP_AUDIT_READ); /* one of the high word */
	d[WORD(CAP_AUDIT_READ)].effective &= ~BIT(CAP_AUDIT_READ);
	if (syscall(SYS_capset, &h, d) < 0)
		die("capset");
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_KILL, 0, 0) < 0)
		die("PR_CAP_AMBIENT_RAISE");
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die("PR_SET_NO_NEW_PRIVS");
	struct __user_cap_data_struct want[2];
	caps_get(want);
	char before[NFIELDS][64];
	read_status(before);

	ready();
	wait_go();

	char now[NFIELDS][64];
	read_status(now);
	for (size_t i = 0; i < NFIELDS; i++)
		CHECK(strcmp(now[i], before[i]) == 0, "%s is %s, it was %s", fields[i], now[i], before[i]);
	struct __user_cap_data_struct got[2];
	caps_get(got);
	for (int w = 0; w < 2; w++)
		CHECK(got[w].effective == want[w].effective && got[w].permitted == want[w].permitted &&
			      got[w].inheritable == want[w].inheritable,
		      "capget, word %d: effective %#x permitted %#x inheritable %#x; they were %#x %#x %#x", w,
		      got[w].effective, got[w].permitted, got[w].inheritable, want[w].effective, want[w].permitted,
		      want[w].inheritable);
	for (size_t i = 0; i < sizeof(bnd) / sizeof(bnd[0]); i++)
		CHECK(prctl(PR_CAPBSET_READ, bnd[i], 0, 0, 0) == 0, "capability %d is in the bounding set again", bnd[i]);
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_KILL, 0, 0) == 1, "CAP_KILL is not ambient any more");
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs is not set any more");
	/* CAP_MKNOD is gone for good: raising it again fails. */
	got[WORD(CAP_MKNOD)].effective |= BIT(CAP_MKNOD);
	got[WORD(CAP_MKNOD)].permitted |= BIT(CAP_MKNOD);
	CHECK(syscall(SYS_capset, &h, got) < 0 && errno == EPERM, "CAP_MKNOD could be taken back into the permitted set");
	finish();
}
