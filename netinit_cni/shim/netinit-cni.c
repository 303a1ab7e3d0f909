/*
 * netinit-cni: the CNI plugin binary the node's container runtime executes (chained after the network plugin).
 *
 * It is a forwarder, not the plugin's logic: it sends the CNI call (the CNI_* environment and the network config
 * on stdin) over a unix socket to the node agent (`netinit-cni agent`, a DaemonSet pod running this project's
 * Python), and hands the agent's answer (stdout, exit code) back to the runtime. It is C and links statically, so
 * it runs on nodes without Python (Bottlerocket, Talos, Container-Optimized OS) and needs nothing from the node.
 *
 * When the agent cannot be reached (not installed yet, upgrading, crashed), the call must not take the node
 * down: VERSION is answered here, ADD and CHECK pass `prevResult` through unchanged, DEL succeeds. Pods that
 * need no capture start as before; a pod that needs capture starts without rules, and its `istio-validation`
 * init container fails (exit 126), so the kubelet restarts it instead of running it uncaptured, until the
 * agent's repair loop deletes it once the agent is back. docs/cni.md argues the design.
 *
 * Wire format to the agent (version 1): "NETINIT-CNI/1\n", then NAME=VALUE\0 for each CNI_* variable set, an
 * empty \0, then the config bytes; the shim half-closes. The agent answers "<exit code>\n" and the bytes for
 * stdout, then closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/var/run/netinit-cni/agent.sock"
#define DEFAULT_TIMEOUT 30
#define MAX_INPUT (4 << 20)
static const char *VARS[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"};
static const char *VERSIONS = "[\"0.3.0\",\"0.3.1\",\"0.4.0\",\"1.0.0\"]";

static char *slurp(FILE *f, size_t *len) {
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return NULL;
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            if (cap >= MAX_INPUT) break;
            cap *= 2;
            char *bigger = realloc(buf, cap + 1);
            if (!bigger) { free(buf); return NULL; }
            buf = bigger;
        }
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Skip one JSON value starting at s[i] (after whitespace); returns the index after it, or -1 if malformed. */
static long skip_ws(const char *s, long i, long n) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

static long skip_string(const char *s, long i, long n) { /* s[i] == '"' */
    for (i++; i < n; i++) {
        if (s[i] == '\\') { i++; continue; }
        if (s[i] == '"') return i + 1;
    }
    return -1;
}

static long skip_value(const char *s, long i, long n) {
    i = skip_ws(s, i, n);
    if (i >= n) return -1;
    if (s[i] == '"') return skip_string(s, i, n);
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        for (; i < n; i++) {
            if (s[i] == '"') { i = skip_string(s, i, n); if (i < 0) return -1; i--; continue; }
            if (s[i] == '{' || s[i] == '[') depth++;
            else if (s[i] == '}' || s[i] == ']') { if (--depth == 0) return i + 1; }
        }
        return -1;
    }
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\n' && s[i] != '\r' && s[i] != '\t') i++;
    return i;
}

/* Find the value of top-level key `key` in the JSON object `s`: its start and end, 0 if found. */
static int top_level(const char *s, long n, const char *key, long *start, long *end) {
    long i = skip_ws(s, 0, n);
    size_t klen = strlen(key);
    if (i >= n || s[i] != '{') return -1;
    i++;
    for (;;) {
        i = skip_ws(s, i, n);
        if (i >= n || s[i] != '"') return -1;
        long kend = skip_string(s, i, n);
        if (kend < 0) return -1;
        int match = (size_t)(kend - i - 2) == klen && memcmp(s + i + 1, key, klen) == 0;
        i = skip_ws(s, kend, n);
        if (i >= n || s[i] != ':') return -1;
        long vstart = skip_ws(s, i + 1, n);
        long vend = skip_value(s, vstart, n);
        if (vend < 0) return -1;
        if (match) { *start = vstart; *end = vend; return 0; }
        i = skip_ws(s, vend, n);
        if (i < n && s[i] == ',') { i++; continue; }
        return -1;
    }
}

/* A top-level string value without escapes (a path), copied into out; 0 if found. */
static int top_string(const char *s, long n, const char *key, char *out, size_t cap) {
    long a, b;
    if (top_level(s, n, key, &a, &b) != 0 || s[a] != '"' || b - a - 2 <= 0 || (size_t)(b - a - 2) >= cap) return -1;
    if (memchr(s + a + 1, '\\', (size_t)(b - a - 2))) return -1;
    memcpy(out, s + a + 1, (size_t)(b - a - 2));
    out[b - a - 2] = '\0';
    return 0;
}

static void cni_error(const char *version, int code, const char *msg, const char *details) {
    printf("{\"cniVersion\":\"%s\",\"code\":%d,\"msg\":\"%s\",\"details\":\"%s\"}\n", version, code, msg, details);
}

static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        buf += w; len -= (size_t)w;
    }
    return 0;
}

/* The agent is not there: what is safe for every pod on the node (see the top of this file). */
static int without_agent(const char *cmd, const char *conf, long n, const char *version, const char *why) {
    fprintf(stderr, "netinit-cni: the node agent is not reachable (%s); %s\n", why,
            strcmp(cmd, "DEL") == 0 ? "nothing to undo here" :
            "passing the network result through uncaptured: a pod that needs capture fails its istio-validation");
    if (strcmp(cmd, "DEL") == 0) return 0;
    long a, b;
    if (top_level(conf, n, "prevResult", &a, &b) != 0) {
        cni_error(version, 7, "netinit-cni is a chained plugin: the network config has no prevResult",
                  "the node agent is not reachable either");
        return 1;
    }
    if (strcmp(cmd, "ADD") == 0) {
        fwrite(conf + a, 1, (size_t)(b - a), stdout);
        putchar('\n');
    }
    return 0;
}

int main(void) {
    const char *cmd = getenv("CNI_COMMAND");
    size_t n = 0;
    char *conf = slurp(stdin, &n);
    char version[32] = "1.0.0";
    if (!conf) { cni_error(version, 5, "netinit-cni: out of memory reading the network config", ""); return 1; }
    top_string(conf, (long)n, "cniVersion", version, sizeof version);
    if (!cmd || !*cmd) {
        cni_error(version, 4, "netinit-cni: CNI_COMMAND is not set", "the runtime sets ADD, DEL, CHECK or VERSION");
        return 1;
    }
    if (strcmp(cmd, "VERSION") == 0) {
        printf("{\"cniVersion\":\"%s\",\"supportedVersions\":%s}\n", version, VERSIONS);
        return 0;
    }
    long first = skip_ws(conf, 0, (long)n);
    if (first >= (long)n || conf[first] != '{' || skip_value(conf, first, (long)n) < 0) {
        cni_error(version, 6, "netinit-cni: the network config on stdin is not a JSON object", "stdin");
        return 1;
    }
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)] = DEFAULT_SOCKET;
    top_string(conf, (long)n, "agentSocket", path, sizeof path);
    long timeout = DEFAULT_TIMEOUT, a, b;
    if (top_level(conf, (long)n, "agentTimeoutSeconds", &a, &b) == 0) {
        long t = strtol(conf + a, NULL, 10);
        if (t > 0 && t <= 600) timeout = t;
    }

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, strlen(path) + 1); /* top_string bounded it */
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s: %s", path, strerror(errno));
        return without_agent(cmd, conf, (long)n, version, why);
    }
    struct timeval tv = {.tv_sec = timeout};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    int ok = write_all(fd, "NETINIT-CNI/1\n", 14) == 0;
    for (size_t i = 0; ok && i < sizeof VARS / sizeof *VARS; i++) {
        const char *v = getenv(VARS[i]);
        if (!v) continue;
        ok = write_all(fd, VARS[i], strlen(VARS[i])) == 0 && write_all(fd, "=", 1) == 0 &&
             write_all(fd, v, strlen(v) + 1) == 0;
    }
    ok = ok && write_all(fd, "", 1) == 0 && write_all(fd, conf, n) == 0 && shutdown(fd, SHUT_WR) == 0;
    if (!ok) {
        /* Connected, then lost: the agent may have acted; an error makes the runtime retry (ADD is idempotent). */
        cni_error(version, 11, "netinit-cni: lost the node agent while sending the call", strerror(errno));
        return 1;
    }
    FILE *in = fdopen(fd, "r");
    size_t got = 0;
    char *answer = in ? slurp(in, &got) : NULL;
    char *nl = answer ? memchr(answer, '\n', got) : NULL;
    if (!nl || (ferror(in) && errno == EAGAIN)) {
        cni_error(version, 11, "netinit-cni: the node agent did not answer in time; try again later",
                  errno == EAGAIN ? "timed out (agentTimeoutSeconds)" : "no answer");
        return 1;
    }
    int code = atoi(answer);
    fwrite(nl + 1, 1, got - (size_t)(nl + 1 - answer), stdout);
    return code;
}
