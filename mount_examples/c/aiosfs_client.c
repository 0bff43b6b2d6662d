/*
 * aiosfs_client: the clients' common task on a mounted aiosfs, with POSIX calls from libc only.
 *
 *   usage: aiosfs_client [--max-tokens N] MOUNTPOINT [PROMPT]
 *   build: cc -O2 -Wall -Wextra -Werror -pthread -o aiosfs_client aiosfs_client.c
 *          (or: make examples)
 *
 *   1. mkdir agents/c-PID                creates an agent; config takes {"max_tokens": N}
 *   2. open(agents/NAME/syscall, O_RDWR) a transaction: write the prompt, then read the same
 *                                        descriptor until EOF: the read submits the syscall,
 *                                        blocks until its answer is complete, returns it whole
 *   3. agents/NAME/stream                read in a loop (in a thread) while a JSON syscall
 *                                        runs: its tokens as they are generated, then EOF;
 *                                        out then has the same answer
 *   4. store/NAME/notes.txt              written, indexed (sys/store "pending_index" 0), then
 *                                        found by meaning: readdir store/NAME/.search/QUERY/
 *   5. rmdir agents/NAME                 removes the agent (and the note goes too), even after
 *                                        a failure
 *
 * Exit status: 0 on success; 1 with "STEP PATH: ERRNO (strerror)" on stderr when a call fails
 * (EINVAL: the kernel rejected a config or a syscall; its reason, from agents/NAME/status,
 * follows); 2 on bad usage. The JSON files are read with strstr: enough for the one number or
 * string wanted here; a real client would use a JSON parser.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define PROG "aiosfs_client"
#define NOTE "Agents talk to the kernel through files: write a request to syscall, read the answer from out.\n"
#define QUERY "how do agents talk to the kernel"
#define INDEX_TIMEOUT_S 60.0

/* A growable byte buffer. */
struct buf {
    char *data;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            fprintf(stderr, "%s: out of memory\n", PROG);
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

/* The names of the errors a mount answers with; libc has only their text (strerror). */
static const char *errno_name(int e)
{
    static const struct {
        int code;
        const char *name;
    } names[] = {
        {EPERM, "EPERM"},   {ENOENT, "ENOENT"},       {EINTR, "EINTR"},         {EIO, "EIO"},
        {EBADF, "EBADF"},   {EAGAIN, "EAGAIN"},       {EACCES, "EACCES"},       {EEXIST, "EEXIST"},
        {EXDEV, "EXDEV"},   {ENOTDIR, "ENOTDIR"},     {EISDIR, "EISDIR"},       {EINVAL, "EINVAL"},
        {EFBIG, "EFBIG"},   {ENOSPC, "ENOSPC"},       {EROFS, "EROFS"},         {ELOOP, "ELOOP"},
        {ENOTSUP, "ENOTSUP"}, {ENOTEMPTY, "ENOTEMPTY"}, {ETIMEDOUT, "ETIMEDOUT"},
        {ENAMETOOLONG, "ENAMETOOLONG"}, {ENOTCONN, "ENOTCONN"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].code == e)
            return names[i].name;
    return "errno";
}

static int last_errno; /* the errno of the last failure reported, for main's EINVAL hint */

/* Report a failed STEP on PATH with errno E; returns -1 so that callers can `return fail(...)`. */
static int fail_with(const char *step, const char *path, int e, const char *detail)
{
    last_errno = e;
    fprintf(stderr, "%s: %s %s: %s (%s)\n", PROG, step, path, errno_name(e),
            detail ? detail : strerror(e));
    return -1;
}

static int fail(const char *step, const char *path)
{
    return fail_with(step, path, errno, NULL);
}

/* snprintf into a PATH_MAX-sized buffer; a path too long fails with ENAMETOOLONG. */
static int path_of(char *out, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(out, size, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= size) {
        errno = ENAMETOOLONG;
        return fail("path", fmt);
    }
    return 0;
}

/* Write all LEN bytes of DATA to FD, looping over partial writes and EINTR. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read FD until EOF into OUT; with ECHO each chunk also goes to stdout as it arrives. */
static int read_all(int fd, struct buf *out, int echo, int *reads)
{
    char chunk[65536];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            return 0;
        buf_add(out, chunk, (size_t)n);
        if (reads)
            (*reads)++;
        if (echo && write_all(STDOUT_FILENO, chunk, (size_t)n) < 0)
            return -1;
    }
}

/* Read a whole file into OUT (which it empties first). */
static int read_file(const char *path, struct buf *out)
{
    out->len = 0;
    buf_add(out, "", 0);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open", path);
    int rc = read_all(fd, out, 0, NULL);
    if (rc < 0)
        fail("read", path);
    close(fd);
    return rc;
}

/* Write a whole file and close it. The kernel acts on a config or a syscall at the close (or at
 * the write, once the bytes look complete) and reports a rejection from either. */
static int write_file(const char *path, const char *data, int flags)
{
    int fd = open(path, O_WRONLY | O_TRUNC | flags, 0644);
    if (fd < 0)
        return fail("open", path);
    if (write_all(fd, data, strlen(data)) < 0) {
        fail("write", path);
        close(fd);
        return -1;
    }
    if (close(fd) < 0)
        return fail("close", path);
    return 0;
}

/* The number after "KEY": in a JSON text, or -1 if it is not there. */
static long json_number(const char *json, const char *key)
{
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(json, pattern);
    return at ? strtol(at + strlen(pattern), NULL, 10) : -1;
}

/* Append TEXT to OUT as a JSON string, quotes included. */
static void json_string(struct buf *out, const char *text)
{
    buf_add(out, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char esc[2] = {'\\', (char)*c};
            buf_add(out, esc, 2);
        } else if (*c < 0x20) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            buf_add(out, esc, 6);
        } else {
            buf_add(out, (const char *)c, 1);
        }
    }
    buf_add(out, "\"", 1);
}

/* 2. One syscall on one descriptor: write the prompt, read back its answer. */
static int transaction(const char *agent_dir, const char *prompt, struct buf *answer)
{
    char path[4096];
    if (path_of(path, sizeof path, "%s/syscall", agent_dir) < 0)
        return -1;
    /* O_RDWR without O_CREAT or O_TRUNC: the descriptor that asks is the one that hears. */
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return fail("open", path);
    /* A trailing newline marks the text complete, so a bad syscall fails this write (EINVAL). */
    int rc = 0;
    if (write_all(fd, prompt, strlen(prompt)) < 0 || write_all(fd, "\n", 1) < 0)
        rc = fail("write", path);
    else if (read_all(fd, answer, 0, NULL) < 0) /* submits, waits, answers, then EOF */
        rc = fail("read", path);
    if (close(fd) < 0 && rc == 0)
        rc = fail("close", path);
    return rc;
}

/* What the stream reader thread reads, and how it ended. */
struct live {
    int fd;
    struct buf text;
    int reads;
    int err; /* 0, or the errno its read failed with */
};

static void *read_stream(void *arg)
{
    struct live *live = arg;
    if (read_all(live->fd, &live->text, 1, &live->reads) < 0)
        live->err = errno;
    close(live->fd);
    return NULL;
}

/* 3. A JSON syscall, its tokens read live from stream.
 *
 * A read of stream attaches to the agent's oldest unfinished answer, or waits for the next
 * syscall when none is; so the read starts (in a thread) before the syscall is submitted,
 * never after (an answer that finished first would be missed, and the read would wait for the
 * next one). Should the submission fail, main removes the agent and the read ends (ENOENT). */
static int streamed(const char *agent_dir, const char *prompt, int max_tokens, int *reads,
                    size_t *size)
{
    char stream_path[4096], syscall_path[4096], out_path[4096];
    if (path_of(stream_path, sizeof stream_path, "%s/stream", agent_dir) < 0 ||
        path_of(syscall_path, sizeof syscall_path, "%s/syscall", agent_dir) < 0 ||
        path_of(out_path, sizeof out_path, "%s/out", agent_dir) < 0)
        return -1;
    static struct live live; /* outlives this call: the thread may still read after a failure */
    live.fd = open(stream_path, O_RDONLY);
    if (live.fd < 0)
        return fail("open", stream_path);
    fflush(stdout); /* the thread writes to the descriptor directly */
    pthread_t reader;
    int e = pthread_create(&reader, NULL, read_stream, &live);
    if (e != 0) {
        close(live.fd);
        return fail_with("pthread_create", stream_path, e, NULL);
    }

    struct buf call = {0};
    buf_add(&call, "{\"call\": \"llm\", \"prompt\": ", 26);
    json_string(&call, prompt);
    char tail[96];
    snprintf(tail, sizeof tail, ", \"max_tokens\": %d, \"temperature\": 0.0}\n", max_tokens);
    buf_add(&call, tail, strlen(tail));
    int rc = write_file(syscall_path, call.data, 0); /* write-and-close submits it */
    free(call.data);
    if (rc < 0)
        return -1;

    pthread_join(reader, NULL);
    if (live.err != 0)
        return fail_with("read", stream_path, live.err, NULL);

    /* out hands out undelivered answers oldest first; the transaction's answer was delivered
     * on its own descriptor, so this is the streamed one, whole. */
    struct buf out = {0};
    rc = read_file(out_path, &out);
    if (rc == 0 && (out.len != live.text.len || memcmp(out.data, live.text.data, out.len) != 0))
        rc = fail_with("compare", out_path, EIO, "out differs from what stream showed");
    *reads = live.reads;
    *size = live.text.len;
    free(out.data);
    return rc;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* 4. Write a note into store/, wait until it is indexed, find it by meaning. */
static int search(const char *mount, const char *name)
{
    char dir[4096], note[4096], info[4096], results[4096], link[4096 + 256];
    if (path_of(dir, sizeof dir, "%s/store/%s", mount, name) < 0 ||
        path_of(note, sizeof note, "%s/notes.txt", dir) < 0 ||
        path_of(info, sizeof info, "%s/sys/store", mount) < 0 ||
        path_of(results, sizeof results, "%s/.search/%s", dir, QUERY) < 0)
        return -1;
    if (mkdir(dir, 0755) < 0)
        return fail("mkdir", dir);
    /* store/ is an ordinary filesystem: create, write, close (the close commits it). */
    if (write_file(note, NOTE, O_CREAT) < 0)
        return -1;
    double start = now_s();
    struct buf text = {0};
    long pending;
    /* sys/store's "pending_index": how many files wait to be found by meaning */
    for (;;) {
        if (read_file(info, &text) < 0) {
            free(text.data);
            return -1;
        }
        pending = json_number(text.data, "pending_index");
        if (pending == 0)
            break;
        if (pending < 0) {
            free(text.data);
            return fail_with("parse", info, EIO, "no \"pending_index\" in it");
        }
        if (now_s() - start > INDEX_TIMEOUT_S) {
            free(text.data);
            return fail_with("wait for the index of", note, ETIMEDOUT, "still not indexed after 60 s");
        }
        nanosleep(&(struct timespec){0, 50 * 1000 * 1000}, NULL);
    }
    free(text.data);
    printf("wrote store/%s/notes.txt; indexed after %.1f s\n", name, now_s() - start);

    /* A query is a directory; its entries are symbolic links RANK-FILENAME to the matches. */
    DIR *d = opendir(results);
    if (d == NULL)
        return fail("list", results);
    char *ranked[64];
    size_t count = 0;
    struct dirent *entry;
    errno = 0;
    while ((entry = readdir(d)) != NULL && count < 64)
        if (entry->d_name[0] != '.')
            ranked[count++] = strdup(entry->d_name);
    int rc = errno != 0 ? fail("list", results) : 0;
    closedir(d);
    qsort(ranked, count, sizeof ranked[0], compare_names);
    int best = 0;
    for (size_t i = 0; i < count; i++) {
        char target[4096];
        snprintf(link, sizeof link, "%s/%s", results, ranked[i]);
        ssize_t n = rc == 0 ? readlink(link, target, sizeof target - 1) : -1;
        if (rc == 0 && n < 0)
            rc = fail("readlink", link);
        if (rc == 0) {
            target[n] = '\0';
            printf("%s -> %s\n", ranked[i], target);
            best = best || strcmp(ranked[i], "1-notes.txt") == 0;
        }
        free(ranked[i]);
    }
    if (rc == 0 && !best)
        rc = fail_with("search", results, ENOENT, "notes.txt is not the best match");
    return rc;
}

/* Print the message of agents/NAME/status's "last_error", if there is one. */
static void print_last_error(const char *agent_dir)
{
    char path[4096];
    struct buf status = {0};
    int saved = last_errno;
    if (path_of(path, sizeof path, "%s/status", agent_dir) == 0 && read_file(path, &status) == 0) {
        const char *err = strstr(status.data, "\"last_error\":");
        const char *msg = err ? strstr(err, "\"message\": \"") : NULL;
        if (msg != NULL) {
            /* the JSON string up to its closing quote, with \" and \\ unescaped */
            fprintf(stderr, "%s: the kernel said: ", PROG);
            for (msg += strlen("\"message\": \""); *msg && *msg != '"'; msg++) {
                if (*msg == '\\' && msg[1] != '\0')
                    msg++;
                fputc(*msg, stderr);
            }
            fputc('\n', stderr);
        }
    }
    free(status.data);
    last_errno = saved;
}

/* Steps 2 to 4 on an agent that exists; main creates and removes it. */
static int run(const char *mount, const char *name, const char *agent_dir, const char *prompt,
               int max_tokens)
{
    char config[4096], settings[64];
    if (path_of(config, sizeof config, "%s/config", agent_dir) < 0)
        return -1;
    /* config takes a JSON object (or key=value lines); only the keys named change. */
    snprintf(settings, sizeof settings, "{\"max_tokens\": %d}", max_tokens);
    struct buf text = {0};
    if (write_file(config, settings, 0) < 0 || read_file(config, &text) < 0) {
        free(text.data);
        return -1;
    }
    printf("config: max_tokens=%ld\n", json_number(text.data, "max_tokens"));
    free(text.data);

    printf("--- transaction: agents/%s/syscall ---\n", name);
    struct buf answer = {0};
    if (transaction(agent_dir, prompt, &answer) < 0) {
        free(answer.data);
        return -1;
    }
    fwrite(answer.data, 1, answer.len, stdout);
    free(answer.data);

    printf("--- stream: agents/%s/stream ---\n", name);
    struct buf question = {0};
    buf_add(&question, "In one sentence: ", 17);
    buf_add(&question, prompt, strlen(prompt));
    int reads = 0;
    size_t size = 0;
    int rc = streamed(agent_dir, question.data, max_tokens, &reads, &size);
    free(question.data);
    if (rc < 0)
        return -1;
    printf("(stream: %d reads, %zu bytes; out has the same answer)\n", reads, size);

    printf("--- search: store/%s/.search/%s/ ---\n", name, QUERY);
    return search(mount, name);
}

static int usage(const char *message)
{
    fprintf(stderr, "%s: %s\nusage: %s [--max-tokens N] MOUNTPOINT [PROMPT]\n", PROG, message,
            PROG);
    return 2;
}

int main(int argc, char **argv)
{
    int max_tokens = 32;
    const char *positional[2];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max-tokens") == 0) {
            char *end;
            if (++i == argc)
                return usage("--max-tokens takes a positive integer");
            long n = strtol(argv[i], &end, 10);
            if (*argv[i] == '\0' || *end != '\0' || n < 1 || n > 1000000)
                return usage("--max-tokens takes a positive integer");
            max_tokens = (int)n;
        } else if (npos < 2 && (argv[i][0] != '-' || argv[i][1] == '\0')) {
            positional[npos++] = argv[i];
        } else {
            return usage("expected MOUNTPOINT and at most one PROMPT");
        }
    }
    if (npos == 0)
        return usage("expected MOUNTPOINT and at most one PROMPT");
    const char *mount = positional[0];
    const char *prompt = npos == 2 ? positional[1] : "What is a file system? Answer briefly.";

    char name[64], agent_dir[4096], store_dir[4096], note[4096];
    snprintf(name, sizeof name, "c-%ld", (long)getpid()); /* unique: runs never share an agent */
    if (path_of(agent_dir, sizeof agent_dir, "%s/agents/%s", mount, name) < 0 ||
        path_of(store_dir, sizeof store_dir, "%s/store/%s", mount, name) < 0 ||
        path_of(note, sizeof note, "%s/notes.txt", store_dir) < 0)
        return 1;
    if (mkdir(agent_dir, 0700) < 0) { /* 1. mkdir creates the agent */
        int e = errno;
        fprintf(stderr, "%s: mkdir %s: %s (%s)%s%s%s\n", PROG, agent_dir, errno_name(e),
                strerror(e), e == ENOENT ? "; is aiosfs mounted at " : "",
                e == ENOENT ? mount : "", e == ENOENT ? "?" : "");
        return 1;
    }
    printf("created agent %s\n", name);

    int rc = 0;
    if (run(mount, name, agent_dir, prompt, max_tokens) < 0) {
        rc = 1;
        if (last_errno == EINVAL) /* the kernel's reason for rejecting a config or syscall */
            print_last_error(agent_dir);
    }
    fflush(stdout);
    struct stat st;
    if (lstat(store_dir, &st) == 0) {
        if ((unlink(note) < 0 && errno != ENOENT && fail("rm", note) < 0) ||
            (rmdir(store_dir) < 0 && fail("rmdir", store_dir) < 0))
            rc = 1;
        else
            printf("removed store/%s\n", name);
    }
    /* 5. rmdir removes the agent, cancels anything it still runs and wakes its readers. */
    if (rmdir(agent_dir) < 0) {
        fail("rmdir", agent_dir);
        rc = 1;
    } else {
        printf("removed agent %s\n", name);
    }
    return rc;
}
