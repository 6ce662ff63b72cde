/*
 * Memory of every kind: anonymous private memory with a pattern; anonymous
 * MAP_SHARED memory shared with a child (each sees the other's writes made
 * after the move); a private file mapping written to (its copy-on-write
 * bytes kept, the file unchanged); a shared file mapping (writes reach the
 * file); a region made read-only with mprotect and a PROT_NONE guard page
 * (still so: their perms in /proc/self/maps, and writing faults); a region
 * moved by mremap, with its content, its old place unmapped; a
 * MAP_GROWSDOWN mapping; and transparent huge pages (MADV_HUGEPAGE) and
 * MAP_HUGETLB if this kernel gives them (that part is skipped otherwise).
 */
#include "corpus.h"
#include <setjmp.h>
#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096
#define ANON_SIZE (1 << 20)
#define HUGE_SIZE (4 << 20)

static unsigned char pattern(size_t i, int seed) { return (unsigned char)(i * 7 + (i >> 12) + seed); }

static void fill(void *p, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		((unsigned char *)p)[i] = pattern(i, seed);
}

/* same says where p differs from its pattern, or -1. */
static long same(const void *p, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		if (((const unsigned char *)p)[i] != pattern(i, seed))
			return i;
	return -1;
}

#define CHECK_PATTERN(what, p, n, seed)                                                                  \
	do {                                                                                             \
		long _at = same(p, n, seed);                                                             \
		CHECK(_at < 0, "%s: the content differs at byte %ld (%#x, not %#x)", what, _at,          \
		      _at < 0 ? 0 : ((unsigned char *)(p))[_at], _at < 0 ? 0 : pattern(_at, seed));      \
	} while (0)

/* mapping finds the mapping of /proc/self/smaps that holds addr: where it
 * starts and ends, its perms (4 letters), and its VmFlags. */
static int mapping(void *addr, uintptr_t *start, uintptr_t *end, char perms[5], char *vmflags, size_t n)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		uintptr_t lo, hi;
		char p[5];
		if (sscanf(line, "%lx-%lx %4s", &lo, &hi, p) == 3 && strchr(line, '-') < strchr(line, ' ')) {
			if (found)
				break;
			if (lo <= (uintptr_t)addr && (uintptr_t)addr < hi) {
				found = 1;
				*start = lo;
				*end = hi;
				memcpy(perms, p, 5);
			}
		} else if (found && strncmp(line, "VmFlags:", 8) == 0 && vmflags) {
			snprintf(vmflags, n, "%s", line + 8);
			vmflags[strcspn(vmflags, "\n")] = 0;
		}
	}
	fclose(f);
	return found;
}

/* check_perms checks that [addr, addr+len) is mapped, all of it with perms want. */
static void check_perms(const char *what, void *addr, size_t len, const char *want)
{
	uintptr_t start = 0, end = 0;
	char perms[5];
	if (!mapping(addr, &start, &end, perms, NULL, 0)) {
		fail("%s: nothing is mapped at %p any more", what, addr);
		return;
	}
	CHECK(strcmp(perms, want) == 0, "%s: its perms are %s, they were %s", what, perms, want);
	CHECK(end >= (uintptr_t)addr + len, "%s: its mapping ends at %#lx, before its end %p", what, end, (char *)addr + len);
}

/* what_is_at describes the mapping at addr, or says it is unmapped. */
static void what_is_at(void *addr, char *out, size_t n)
{
	uintptr_t s, e;
	char p[5];
	if (mapping(addr, &s, &e, p, NULL, 0))
		snprintf(out, n, "%lx-%lx %s", s, e, p);
	else
		snprintf(out, n, "unmapped");
}

static sigjmp_buf fault_jmp;
static volatile int fault_expected;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
	if (fault_expected)
		siglongjmp(fault_jmp, 1);
	fail("signal %d touching %p: memory mapped before the move is not there", sig, si->si_addr);
	corpus_write("result", corpus_failures);
	_exit(1);
}

/* faults says whether writing to p faults (read too, if rd). */
static int faults(volatile char *p, int rd)
{
	fault_expected = 1;
	if (sigsetjmp(fault_jmp, 1)) {
		fault_expected = 0;
		return 1;
	}
	if (rd)
		(void)*p;
	else
		*p = 1;
	fault_expected = 0;
	return 0;
}

static int make_file(const char *name, int seed, size_t len)
{
	int fd = open(corpus_path(name), O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open %s", name);
	char *buf = malloc(len);
	fill(buf, len, seed);
	if (write(fd, buf, len) != (ssize_t)len)
		die("write %s", name);
	free(buf);
	return fd;
}

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_segv;
	sa.sa_flags = SA_NODEFER | SA_SIGINFO;
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);

	/* Anonymous private. */
	unsigned char *anon = map(ANON_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(anon, ANON_SIZE, 1);

	/* Anonymous shared with a child. */
	volatile char *shared = map(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS);
	strcpy((char *)shared, "parent before");
	pid_t kid = fork();
	if (kid < 0)
		die("fork");
	if (kid == 0) {
		while (!exists("go"))
			sleep_ms(10);
		/* The parent's write of before the move, and its write of after. */
		for (int i = 0; i < 1000 && strcmp((char *)shared, "parent after") != 0; i++)
			sleep_ms(10);
		const char *v = strcmp((char *)shared, "parent after") == 0 ? "child saw parent after" : "child saw no write";
		strcpy((char *)shared + 1024, v);
		_exit(0);
	}

	/* A private file mapping, written to. */
	int pfd = make_file("private.dat", 2, 2 * PAGE);
	unsigned char *priv = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, pfd, 0);
	if (priv == MAP_FAILED)
		die("mmap private.dat");
	memcpy(priv + 100, "copy-on-write", 13);

	/* A shared file mapping. */
	int sfd = make_file("shared.dat", 3, 2 * PAGE);
	char *fshared = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
	if (fshared == MAP_FAILED)
		die("mmap shared.dat");
	memcpy(fshared + 200, "written before", 14);

	/* Read-only, and a guard page in the middle of three. */
	unsigned char *ro = map(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(ro, 2 * PAGE, 4);
	if (mprotect(ro, 2 * PAGE, PROT_READ) < 0)
		die("mprotect");
	unsigned char *guarded = map(3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(guarded, 3 * PAGE, 5);
	if (mprotect(guarded + PAGE, PAGE, PROT_NONE) < 0)
		die("mprotect");

	/* Moved by mremap, to a place of its own choosing (reserved first). */
	unsigned char *old = map(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
	fill(old, 4 * PAGE, 6);
	unsigned char *to = map(8 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS);
	munmap(to + 6 * PAGE, 2 * PAGE);
	unsigned char *moved = mremap(old, 4 * PAGE, 6 * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
	if (moved != to)
		die("mremap");
	fill(moved + 4 * PAGE, 2 * PAGE, 7); /* the grown part */

	/* MAP_GROWSDOWN. */
	unsigned char *gd = map(4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN);
	fill(gd, 4 * PAGE, 8);
	uintptr_t gd_start, gd_end;
	char gd_perms[5], gd_flags[256] = "";
	if (!mapping(gd, &gd_start, &gd_end, gd_perms, gd_flags, sizeof(gd_flags)))
		die("no growsdown mapping");

	/* Transparent huge pages, if any. */
	unsigned char *thp = NULL;
	char *raw = mmap(NULL, 2 * HUGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw != MAP_FAILED) {
		thp = (unsigned char *)(((uintptr_t)raw + HUGE_SIZE - 1) & ~(uintptr_t)(HUGE_SIZE - 1));
		if (madvise(thp, HUGE_SIZE, MADV_HUGEPAGE) < 0)
			thp = NULL;
		else
			fill(thp, HUGE_SIZE, 9);
	}
	char thp_flags[256] = "";
	if (thp) {
		uintptr_t b, e;
		char p[5];
		if (!mapping(thp, &b, &e, p, thp_flags, sizeof(thp_flags)) || !strstr(thp_flags, " hg"))
			thp = NULL;
	}
	/* MAP_HUGETLB, if there are huge pages in the pool. */
	unsigned char *hugetlb = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (hugetlb == MAP_FAILED)
		hugetlb = NULL;
	else
		fill(hugetlb, 2 << 20, 10);

	/* What took the mremap'ed region's old place since, if anything. */
	char old_place[128];
	what_is_at(old, old_place, sizeof(old_place));

	ready();
	wait_go();

	CHECK_PATTERN("anonymous private memory", anon, ANON_SIZE, 1);

	CHECK(strcmp((char *)shared, "parent before") == 0, "shared anonymous memory holds \"%s\"", (char *)shared);
	strcpy((char *)shared, "parent after");
	for (int i = 0; i < 1000 && shared[1024] == 0; i++)
		sleep_ms(10);
	CHECK(strcmp((char *)shared + 1024, "child saw parent after") == 0,
	      "shared anonymous memory: the child's answer, written after the move, is \"%s\"", (char *)shared + 1024);
	waitpid(kid, NULL, 0);

	CHECK(memcmp(priv + 100, "copy-on-write", 13) == 0, "the private file mapping lost its written bytes: \"%.13s\"", priv + 100);
	{
		unsigned char buf[2 * PAGE], want[2 * PAGE];
		fill(want, sizeof(want), 2);
		CHECK(pread(pfd, buf, sizeof(buf), 0) == sizeof(buf) && memcmp(buf, want, sizeof(buf)) == 0,
		      "private.dat changed: a private mapping's write reached the file");
		memcpy(want + 100, "copy-on-write", 13);
		CHECK(memcmp(priv, want, sizeof(want)) == 0, "the private file mapping's other bytes changed");
	}
	check_perms("the private file mapping", priv, 2 * PAGE, "rw-p");

	check_perms("the shared file mapping", fshared, 2 * PAGE, "rw-s");
	memcpy(fshared + 300, "written after", 13);
	{
		char buf[16] = "";
		pread(sfd, buf, 14, 200);
		CHECK(memcmp(buf, "written before", 14) == 0, "shared.dat lost the write made before the move: \"%.14s\"", buf);
		pread(sfd, buf, 13, 300);
		CHECK(memcmp(buf, "written after", 13) == 0, "the shared file mapping's write after the move did not reach shared.dat: \"%.13s\"", buf);
		fshared[300] = 'W';
		pread(sfd, buf, 1, 300);
		CHECK(buf[0] == 'W', "the shared file mapping and shared.dat are not the same pages any more");
	}

	check_perms("the read-only region", ro, 2 * PAGE, "r--p");
	CHECK_PATTERN("the read-only region", ro, 2 * PAGE, 4);
	CHECK(faults((char *)ro + 10, 0), "the read-only region is writable");

	check_perms("the guarded region's first page", guarded, PAGE, "rw-p");
	check_perms("the guard page", guarded + PAGE, PAGE, "---p");
	check_perms("the guarded region's last page", guarded + 2 * PAGE, PAGE, "rw-p");
	CHECK(faults((char *)guarded + PAGE + 10, 1), "the PROT_NONE guard page is readable");
	CHECK_PATTERN("the guarded region's first page", guarded, PAGE, 5);
	{
		long at = -1;
		for (size_t i = 2 * PAGE; i < 3 * PAGE && at < 0; i++)
			if (guarded[i] != pattern(i, 5))
				at = i;
		CHECK(at < 0, "the guarded region's last page differs at byte %ld", at);
	}

	check_perms("the mremap'ed region", moved, 6 * PAGE, "rw-p");
	CHECK_PATTERN("the mremap'ed region", moved, 4 * PAGE, 6);
	CHECK_PATTERN("the mremap'ed region's grown part", moved + 4 * PAGE, 2 * PAGE, 7);
	{
		char now[128];
		what_is_at(old, now, sizeof(now));
		CHECK(strcmp(now, old_place) == 0, "the mremap'ed region's old place %p is %s, it was %s", old, now, old_place);
	}

	{
		uintptr_t b = 0, e = 0;
		char p[5] = "", flags[256] = "";
		if (!mapping(gd, &b, &e, p, flags, sizeof(flags)))
			fail("the MAP_GROWSDOWN mapping at %p is gone", gd);
		else {
			CHECK(b == gd_start && e == gd_end && strcmp(p, gd_perms) == 0, "the MAP_GROWSDOWN mapping is %#lx bytes, %s; it was %#lx, %s",
			      e - (uintptr_t)gd, p, gd_end - (uintptr_t)gd, gd_perms);
			CHECK(strstr(flags, " gd") != NULL, "the MAP_GROWSDOWN mapping is not growsdown any more: VmFlags%s (were%s)",
			      flags, gd_flags);
		}
		CHECK_PATTERN("the MAP_GROWSDOWN mapping", gd, 4 * PAGE, 8);
	}

	if (thp) {
		uintptr_t b, e;
		char p[5], flags[256] = "";
		CHECK(mapping(thp, &b, &e, p, flags, sizeof(flags)) && strstr(flags, " hg"),
		      "the MADV_HUGEPAGE region lost its madvise: VmFlags%s (were%s)", flags, thp_flags);
		CHECK_PATTERN("the MADV_HUGEPAGE region", thp, HUGE_SIZE, 9);
	}
	if (hugetlb)
		CHECK_PATTERN("the MAP_HUGETLB region", hugetlb, 2 << 20, 10);
	finish();
}
