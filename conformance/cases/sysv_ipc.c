/*
 * SysV IPC in an IPC namespace of the tree's own (made with
 * unshare(CLONE_NEWIPC) at the start): a shared memory segment with a
 * pattern, attached; a set of three semaphores with values; a message
 * queue with three messages of different types. After the move the same
 * ids under the same keys, the segment's content (and a child attached
 * to it sees the parent's writes), the semaphores' values, and the
 * messages in their order with their types and texts.
 */
#include "corpus.h"
#include <sched.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#define SHM_KEY 0x5eed01
#define SEM_KEY 0x5eed02
#define MSG_KEY 0x5eed03
#define SHM_SIZE (64 * 1024 + 100)

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

struct msg {
	long type;
	char text[64];
};

static const struct {
	long type;
	const char *text;
} msgs[] = { { 3, "third type first" }, { 1, "then type one" }, { 2, "and type two, last" } };
#define NMSGS 3

static unsigned char pattern(size_t i) { return (unsigned char)(i * 11 + 5); }

int main(int argc, char **argv)
{
	corpus_init(argc, argv);
	if (unshare(CLONE_NEWIPC) < 0)
		die("unshare(CLONE_NEWIPC)");

	int shm = shmget(SHM_KEY, SHM_SIZE, IPC_CREAT | IPC_EXCL | 0640);
	if (shm < 0)
		die("shmget");
	unsigned char *mem = shmat(shm, NULL, 0);
	if (mem == (void *)-1)
		die("shmat");
	for (size_t i = 0; i < SHM_SIZE; i++)
		mem[i] = pattern(i);

	int sem = semget(SEM_KEY, 3, IPC_CREAT | IPC_EXCL | 0600);
	if (sem < 0)
		die("semget");
	unsigned short vals[3] = { 7, 0, 4242 };
	if (semctl(sem, 0, SETALL, (union semun){ .array = vals }) < 0)
		die("semctl SETALL");

	int mq = msgget(MSG_KEY, IPC_CREAT | IPC_EXCL | 0600);
	if (mq < 0)
		die("msgget");
	for (int i = 0; i < NMSGS; i++) {
		struct msg m = { msgs[i].type };
		strcpy(m.text, msgs[i].text);
		if (msgsnd(mq, &m, strlen(m.text) + 1, IPC_NOWAIT) < 0)
			die("msgsnd");
	}

	ready();
	wait_go();

	CHECK(shmget(SHM_KEY, 0, 0) == shm, "the segment of key %#x has id %d, it had %d (%s)", SHM_KEY,
	      shmget(SHM_KEY, 0, 0), shm, strerror(errno));
	CHECK(semget(SEM_KEY, 0, 0) == sem, "the semaphore set of key %#x has id %d, it had %d (%s)", SEM_KEY,
	      semget(SEM_KEY, 0, 0), sem, strerror(errno));
	CHECK(msgget(MSG_KEY, 0) == mq, "the message queue of key %#x has id %d, it had %d (%s)", MSG_KEY,
	      msgget(MSG_KEY, 0), mq, strerror(errno));

	struct shmid_ds sds;
	if (shmctl(shm, IPC_STAT, &sds) < 0)
		fail("shmctl IPC_STAT: %s", strerror(errno));
	else {
		CHECK(sds.shm_segsz == SHM_SIZE, "the segment has %zu bytes, not %d", (size_t)sds.shm_segsz, SHM_SIZE);
		CHECK(sds.shm_nattch == 1, "the segment is attached %lu times, not once", (unsigned long)sds.shm_nattch);
		CHECK((sds.shm_perm.mode & 0777) == 0640, "the segment's mode is %03o, not 640", sds.shm_perm.mode & 0777);
	}
	for (size_t i = 0; i < SHM_SIZE; i++)
		if (mem[i] != pattern(i)) {
			fail("the segment's byte %zu is %#x, not %#x", i, mem[i], pattern(i));
			break;
		}
	/* The attachment is the segment: a child attaching it anew sees a write. */
	mem[0] = 0xab;
	pid_t kid = fork();
	if (kid == 0) {
		unsigned char *m2 = shmat(shm, NULL, SHM_RDONLY);
		_exit(m2 == (void *)-1 ? 2 : m2[0] == 0xab && m2[1] == pattern(1) ? 0 : 1);
	}
	int st = 0;
	waitpid(kid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a child attaching the segment after the move %s",
	      WIFEXITED(st) && WEXITSTATUS(st) == 2 ? "cannot" : "sees other bytes than the parent's mapping");

	unsigned short got[3] = { 1, 1, 1 };
	if (semctl(sem, 0, GETALL, (union semun){ .array = got }) < 0)
		fail("semctl GETALL: %s", strerror(errno));
	else
		CHECK(got[0] == vals[0] && got[1] == vals[1] && got[2] == vals[2],
		      "the semaphores are %u %u %u, they were %u %u %u", got[0], got[1], got[2], vals[0], vals[1], vals[2]);
	struct sembuf down = { 0, -7, IPC_NOWAIT };
	CHECK(semop(sem, &down, 1) == 0, "semop taking 7 off the first semaphore: %s", strerror(errno));

	struct msqid_ds mds;
	if (msgctl(mq, IPC_STAT, &mds) < 0)
		fail("msgctl IPC_STAT: %s", strerror(errno));
	else
		CHECK(mds.msg_qnum == NMSGS, "the queue holds %lu messages, not %d", (unsigned long)mds.msg_qnum, NMSGS);
	for (int i = 0; i < NMSGS; i++) {
		struct msg m;
		memset(&m, 0, sizeof(m));
		ssize_t n = msgrcv(mq, &m, sizeof(m.text), 0, IPC_NOWAIT);
		if (n < 0) {
			fail("message %d: msgrcv: %s", i, strerror(errno));
			break;
		}
		CHECK(m.type == msgs[i].type && strcmp(m.text, msgs[i].text) == 0 && n == (ssize_t)strlen(msgs[i].text) + 1,
		      "message %d is of type %ld, \"%.*s\"; it was of type %ld, \"%s\"", i, m.type, (int)n, m.text,
		      msgs[i].type, msgs[i].text);
	}
	finish();
}
