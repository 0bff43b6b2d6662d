/*
 * aiosfs_client: ask an aiosfs agent one question with plain POSIX file calls.
 *
 *   usage: aiosfs_client MOUNTPOINT AGENT PROMPT
 *   build: cc -O2 -Wall -Wextra -Werror -o aiosfs_client aiosfs_client.c   (or: make examples)
 *
 * It uses agents/AGENT/syscall as a transaction file:
 *
 *   mkdir(MOUNTPOINT/agents/AGENT)          creates the agent (already there is fine)
 *   fd = open(".../syscall", O_RDWR)        one descriptor for question and answer
 *   write(fd, PROMPT)                       the question (plain text: a chat turn)
 *   read(fd) until it returns 0             submits the question, blocks until the answer is
 *                                           complete, returns it whole, then EOF
 *
 * The answer to exactly this syscall comes back on this descriptor, even while other programs
 * use the same agent, and it is not delivered again on agents/AGENT/out. PROMPT may also be a
 * JSON syscall, e.g. '{"call": "llm", "prompt": "Hi", "max_tokens": 32}'.
 *
 * The agent is left in place so that its results/, status and history can be read afterwards;
 * remove it with: rmdir MOUNTPOINT/agents/AGENT
 *
 * Exit status: 0 on success; 1 with "PATH: strerror(errno)" on stderr on any failure (EINVAL
 * from write or read means the kernel rejected the syscall; agents/AGENT/status has its reason
 * under "last_error"); 2 on bad usage.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

static const char *progname = "aiosfs_client";

/* Report a failed call on PATH with errno's text, and exit 1. */
static void die(const char *what, const char *path)
{
    int saved = errno;
    fprintf(stderr, "%s: %s %s: %s\n", progname, what, path, strerror(saved));
    exit(1);
}

/* Write all LEN bytes of BUF to FD, looping over partial writes and EINTR. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MOUNTPOINT AGENT PROMPT\n", argc > 0 ? argv[0] : progname);
        return 2;
    }
    const char *mountpoint = argv[1];
    const char *agent = argv[2];
    const char *prompt = argv[3];

    char agent_dir[4096];
    char syscall_path[4096];
    int len = snprintf(agent_dir, sizeof agent_dir, "%s/agents/%s", mountpoint, agent);
    if (len < 0 || (size_t)len >= sizeof agent_dir) {
        errno = ENAMETOOLONG;
        die("path", mountpoint);
    }
    len = snprintf(syscall_path, sizeof syscall_path, "%s/syscall", agent_dir);
    if (len < 0 || (size_t)len >= sizeof syscall_path) {
        errno = ENAMETOOLONG;
        die("path", agent_dir);
    }

    /* mkdir creates the agent; an agent that already exists is simply reused. */
    if (mkdir(agent_dir, 0755) < 0 && errno != EEXIST)
        die("mkdir", agent_dir);

    /* O_RDWR makes this descriptor a transaction: what we write is the syscall, what we read
     * back is its answer. */
    int fd;
    do {
        fd = open(syscall_path, O_RDWR);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        die("open", syscall_path);

    /* The question. A trailing newline marks the text as complete, so a malformed syscall is
     * rejected right here rather than at the read. */
    size_t plen = strlen(prompt);
    if (write_all(fd, prompt, plen) < 0)
        die("write", syscall_path);
    if ((plen == 0 || prompt[plen - 1] != '\n') && write_all(fd, "\n", 1) < 0)
        die("write", syscall_path);

    /* The first read submits the syscall and blocks until its answer is complete; keep reading
     * until EOF (read returns 0), copying everything to stdout. */
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("read", syscall_path);
        }
        if (n == 0)
            break;
        if (write_all(STDOUT_FILENO, buf, (size_t)n) < 0)
            die("write", "<stdout>");
    }

    if (close(fd) < 0)
        die("close", syscall_path);
    return 0;
}
