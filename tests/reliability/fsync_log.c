/* LD_PRELOAD shim for the host-crash simulation (tests/reliability/crash.py).
 *
 * Wraps fsync and fdatasync: once the real call returns, appends "<path> <size> <ns> <inode>\n"
 * to the file named by $FSYNC_LOG, where <size> is the file's size taken just before the call,
 * <ns> CLOCK_MONOTONIC when it returned (Python's time.monotonic_ns() reads the same clock) and
 * <inode> identifies the file across renames (the server fsyncs temp files, then renames them). Bytes up to
 * that size were on disk when the call returned; anything written later was only in the page
 * cache, which a host crash (power, kernel panic, VM gone) loses. Truncating each file to its
 * last logged size rebuilds the disk as such a crash would leave it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void record(int fd, off_t size, unsigned long long inode) {
    const char *log = getenv("FSYNC_LOG");
    char link[64], path[PATH_MAX], line[PATH_MAX + 64];
    struct timespec now;
    ssize_t n;
    int out, len;
    if (!log) return;
    clock_gettime(CLOCK_MONOTONIC, &now);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = 0;
    len = snprintf(line, sizeof line, "%s %lld %lld %llu\n", path, (long long)size,
                   (long long)now.tv_sec * 1000000000LL + now.tv_nsec, inode);
    pthread_mutex_lock(&lock);
    out = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (out >= 0) {
        if (write(out, line, len) < 0) { /* nothing to do: the log is best effort */ }
        close(out);
    }
    pthread_mutex_unlock(&lock);
}

static off_t size_of(int fd, unsigned long long *inode) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    *inode = (unsigned long long)st.st_ino;
    return st.st_size;
}

int fsync(int fd) {
    static int (*real)(int);
    unsigned long long inode = 0;
    off_t size = size_of(fd, &inode);
    int rc;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    rc = real(fd);
    if (rc == 0 && size >= 0) record(fd, size, inode);
    return rc;
}

int fdatasync(int fd) {
    static int (*real)(int);
    unsigned long long inode = 0;
    off_t size = size_of(fd, &inode);
    int rc;
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    rc = real(fd);
    if (rc == 0 && size >= 0) record(fd, size, inode);
    return rc;
}
