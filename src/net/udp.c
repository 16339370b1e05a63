/* The UDP socket under the QUIC endpoint (see udp.h). */
#include "net/udp.h"

#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/cleanup.h"

/* The largest UDP payload over IPv4 (65535 - 20 - 8); IPv6 allows 20 more,
 * but one limit for both keeps GSO chunking simple. */
#define UDP_PAYLOAD_MAX 65507
/* UDP_SEGMENT takes at most this many segments per sendmsg (UDP_MAX_SEGMENTS
 * is 64 in older kernels, 128 in newer ones). */
#define GSO_MAX_SEGS 64
/* Messages per sendmmsg in the fallback path. */
#define SEND_BATCH 64

union rx_ctrl {
  struct cmsghdr align;
  uint8_t buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo)) +
              2 * CMSG_SPACE(sizeof(int))];
};

union tx_ctrl {
  struct cmsghdr align;
  uint8_t buf[CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(int))];
};

struct fy_udp_rx {
  struct mmsghdr msgs[FY_UDP_RECV_BATCH];
  struct iovec iov[FY_UDP_RECV_BATCH];
  struct sockaddr_storage names[FY_UDP_RECV_BATCH];
  union rx_ctrl ctrl[FY_UDP_RECV_BATCH];
  struct sockaddr_storage bound; /* getsockname after bind: the port, and the address without pktinfo */
  socklen_t bound_len;
  uint8_t data[FY_UDP_RECV_BATCH][FY_UDP_RECV_MAX];
};

/* A destination as the socket's family needs it. */
struct dest {
  union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
  } addr;
  socklen_t len;
  bool v4_wire; /* IPv4 on the wire (also when mapped on an IPv6 socket): ECN goes in IP_TOS */
};

/* msghdr and iovec take non-const pointers even for sending. */
static void *unconst(const void *p) {
  union {
    const void *c;
    void *m;
  } u = {.c = p};
  return u.m;
}

static struct fy_udp *from_handle(uv_poll_t *h) {
  return (struct fy_udp *)(void *)((char *)h - offsetof(struct fy_udp, handle));
}

/* --- addresses ----------------------------------------------------------- */

static bool parse_port(const char *s, uint16_t *out) {
  size_t n = strlen(s);
  if (n == 0 || n > 5)
    return false;
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return false;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v > 65535)
    return false;
  *out = (uint16_t)v;
  return true;
}

int fy_udp_parse_addr(const char *text, struct sockaddr_storage *out, socklen_t *len, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  *len = 0;
  if (!text)
    return fy_err_set(err, FY_EINVAL, "no address given");
  size_t n = strlen(text);
  if (n == 0)
    return fy_err_set(err, FY_EINVAL, "empty address; expected host:port, such as 0.0.0.0:4433 or [::]:4433");
  if (n >= FY_UDP_ADDR_MAX)
    return fy_err_set(err, FY_EINVAL, "address \"%.40s...\" is too long (at most %d characters)", text,
                      FY_UDP_ADDR_MAX - 1);

  char host[FY_UDP_ADDR_MAX];
  const char *port;
  bool v6;
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (!close)
      return fy_err_set(err, FY_EINVAL, "address \"%s\": '[' without a closing ']'", text);
    if (close[1] != ':')
      return fy_err_set(err, FY_EINVAL, "address \"%s\": expected ':port' after ']'", text);
    size_t hn = (size_t)(close - text - 1);
    memcpy(host, text + 1, hn);
    host[hn] = '\0';
    port = close + 2;
    v6 = true;
  } else {
    const char *colon = strrchr(text, ':');
    if (!colon)
      return fy_err_set(err, FY_EINVAL, "address \"%s\" has no port; expected host:port", text);
    if (memchr(text, ':', (size_t)(colon - text)))
      return fy_err_set(err, FY_EINVAL, "address \"%s\": an IPv6 address needs brackets, as in [::1]:4433",
                        text);
    size_t hn = (size_t)(colon - text);
    memcpy(host, text, hn);
    host[hn] = '\0';
    port = colon + 1;
    v6 = false;
  }
  if (host[0] == '\0')
    return fy_err_set(err, FY_EINVAL, "address \"%s\" has no host; 0.0.0.0 or [::] means any", text);
  uint16_t port_num = 0;
  if (!parse_port(port, &port_num))
    return fy_err_set(err, FY_EINVAL, "address \"%s\": port \"%s\" is not a number from 0 to 65535", text,
                      port);

  if (v6) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)out;
    if (uv_ip6_addr(host, port_num, sin6) != 0)
      return fy_err_set(err, FY_EINVAL, "address \"%s\": \"%s\" is not a numeric IPv6 address", text, host);
    if (strchr(host, '%') && sin6->sin6_scope_id == 0)
      return fy_err_set(err, FY_EINVAL, "address \"%s\": no network interface \"%s\"", text,
                        strchr(host, '%') + 1);
    *len = sizeof(*sin6);
  } else {
    struct sockaddr_in *sin = (struct sockaddr_in *)out;
    if (uv_ip4_addr(host, port_num, sin) != 0)
      return fy_err_set(err, FY_EINVAL,
                        "address \"%s\": \"%s\" is not a numeric IPv4 address (host names are not "
                        "resolved; IPv6 goes in brackets)",
                        text, host);
    *len = sizeof(*sin);
  }
  return 0;
}

void fy_udp_format_addr(const struct sockaddr *sa, char out[FY_UDP_ADDR_MAX]) {
  char ip[INET6_ADDRSTRLEN + IF_NAMESIZE + 1] = "";
  if (sa && sa->sa_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;
    uv_ip4_name(sin, ip, sizeof(ip));
    snprintf(out, FY_UDP_ADDR_MAX, "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
  } else if (sa && sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;
    uv_ip6_name(sin6, ip, INET6_ADDRSTRLEN);
    char ifname[IF_NAMESIZE];
    if (sin6->sin6_scope_id != 0 && if_indextoname(sin6->sin6_scope_id, ifname)) {
      size_t n = strlen(ip);
      snprintf(ip + n, sizeof(ip) - n, "%%%s", ifname);
    }
    snprintf(out, FY_UDP_ADDR_MAX, "[%s]:%u", ip, (unsigned)ntohs(sin6->sin6_port));
  } else {
    snprintf(out, FY_UDP_ADDR_MAX, "?");
  }
}

static bool is_v4_mapped(const struct sockaddr_in6 *sin6) {
  return IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr);
}

static int make_dest(const struct fy_udp *u, const struct sockaddr *remote, socklen_t remote_len,
                     struct dest *d, struct fy_err *err) {
  memset(d, 0, sizeof(*d));
  if (!remote)
    return fy_err_set(err, FY_EINVAL, "send: no destination address");
  if (remote->sa_family == AF_INET && remote_len >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)remote;
    d->v4_wire = true;
    if (u->family == AF_INET) {
      d->addr.v4 = *sin;
      d->len = sizeof(d->addr.v4);
    } else {
      d->addr.v6.sin6_family = AF_INET6;
      d->addr.v6.sin6_port = sin->sin_port;
      d->addr.v6.sin6_addr.s6_addr[10] = 0xff;
      d->addr.v6.sin6_addr.s6_addr[11] = 0xff;
      memcpy(&d->addr.v6.sin6_addr.s6_addr[12], &sin->sin_addr, 4);
      d->len = sizeof(d->addr.v6);
    }
    return 0;
  }
  if (remote->sa_family == AF_INET6 && remote_len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)remote;
    d->v4_wire = is_v4_mapped(sin6);
    if (u->family == AF_INET6) {
      d->addr.v6 = *sin6;
      d->len = sizeof(d->addr.v6);
      return 0;
    }
    if (!d->v4_wire) {
      char text[FY_UDP_ADDR_MAX];
      fy_udp_format_addr(remote, text);
      return fy_err_set(err, FY_EINVAL, "send to %s: an IPv4 socket cannot reach an IPv6 address", text);
    }
    d->addr.v4.sin_family = AF_INET;
    d->addr.v4.sin_port = sin6->sin6_port;
    memcpy(&d->addr.v4.sin_addr, &sin6->sin6_addr.s6_addr[12], 4);
    d->len = sizeof(d->addr.v4);
    return 0;
  }
  return fy_err_set(err, FY_EINVAL, "send: destination is not an IPv4 or IPv6 socket address");
}

/* --- receiving ----------------------------------------------------------- */

static void deliver(struct fy_udp *u, size_t i, unsigned len) {
  struct fy_udp_rx *rx = u->rx;
  struct msghdr *h = &rx->msgs[i].msg_hdr;
  if (h->msg_flags & MSG_TRUNC) {
    u->stats.rx_truncated++;
    return;
  }
  struct sockaddr_storage local = rx->bound;
  uint8_t ecn = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO && u->family == AF_INET &&
        c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
      struct in_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof(pi));
      ((struct sockaddr_in *)&local)->sin_addr = pi.ipi_addr;
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO && u->family == AF_INET6 &&
               c->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
      struct in6_pktinfo pi;
      memcpy(&pi, CMSG_DATA(c), sizeof(pi));
      struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&local;
      sin6->sin6_addr = pi.ipi6_addr;
      sin6->sin6_scope_id = IN6_IS_ADDR_LINKLOCAL(&pi.ipi6_addr) ? pi.ipi6_ifindex : 0;
    } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS && c->cmsg_len >= CMSG_LEN(1)) {
      ecn = CMSG_DATA(c)[0] & 3; /* a single byte on receive */
    } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_TCLASS &&
               c->cmsg_len >= CMSG_LEN(sizeof(int))) {
      int tclass;
      memcpy(&tclass, CMSG_DATA(c), sizeof(tclass));
      ecn = (uint8_t)(tclass & 3);
    }
  }
  struct fy_udp_pkt pkt = {
      .data = rx->data[i],
      .len = len,
      .remote = (const struct sockaddr *)&rx->names[i],
      .remote_len = h->msg_namelen,
      .local = (const struct sockaddr *)&local,
      .local_len = rx->bound_len,
      .ecn = ecn,
  };
  u->stats.rx_datagrams++;
  u->stats.rx_bytes += len;
  u->cb(u->user, &pkt);
}

static void on_readable(uv_poll_t *h, int status, int events);

static void on_readable(uv_poll_t *h, int status, int events) {
  (void)events;
  struct fy_udp *u = from_handle(h);
  if (u->closing)
    return;
  if (status < 0) {
    /* libuv stopped the poll on POLLERR. Reading SO_ERROR clears a pending
     * socket error; then watch again (the data, if any, is still queued). */
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    (void)getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    u->stats.rx_errors++;
    uv_poll_start(&u->handle, UV_READABLE, on_readable);
    return;
  }
  u->stats.rx_wakeups++;
  struct fy_udp_rx *rx = u->rx;
  unsigned budget = FY_UDP_RECV_BUDGET;
  while (budget > 0) {
    unsigned want = budget < FY_UDP_RECV_BATCH ? budget : FY_UDP_RECV_BATCH;
    for (unsigned i = 0; i < want; i++) {
      struct msghdr *m = &rx->msgs[i].msg_hdr;
      m->msg_namelen = sizeof(rx->names[i]);
      m->msg_controllen = sizeof(rx->ctrl[i].buf);
      m->msg_flags = 0;
    }
    int got = recvmmsg(u->fd, rx->msgs, want, MSG_DONTWAIT, NULL);
    if (got < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        u->stats.rx_errors++; /* e.g. a queued ICMP error; the poll wakes us again if data waits */
      return;
    }
    for (int i = 0; i < got; i++) {
      deliver(u, (size_t)i, rx->msgs[i].msg_len);
      if (u->closing)
        return; /* the callback closed us: no callback after fy_udp_close */
    }
    if (u->batch_end && got > 0) {
      u->batch_end(u->user);
      if (u->closing)
        return;
    }
    budget -= (unsigned)got;
    if ((unsigned)got < want)
      return; /* drained */
  }
  u->stats.rx_budget_hits++;
}

/* --- opening and closing ------------------------------------------------- */

static int set_int(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof(value));
}

/* Asks for FY_UDP_BUF_WANT: SO_*BUFFORCE first (works with CAP_NET_ADMIN and
 * passes net.core.[rw]mem_max), else the capped option. Returns the size the
 * kernel reports afterwards. */
static int grow_buffer(int fd, int name, int force_name) {
  int have = 0;
  socklen_t len = sizeof(have);
  if (getsockopt(fd, SOL_SOCKET, name, &have, &len) == 0 && have >= FY_UDP_BUF_WANT)
    return have;
  if (set_int(fd, SOL_SOCKET, force_name, FY_UDP_BUF_WANT) != 0)
    (void)set_int(fd, SOL_SOCKET, name, FY_UDP_BUF_WANT);
  len = sizeof(have);
  if (getsockopt(fd, SOL_SOCKET, name, &have, &len) != 0)
    return 0;
  return have;
}

static int set_options(int fd, int family, const char *addr, struct fy_err *err) {
  struct opt {
    const char *what;
    int level, name, value;
    bool required;
  };
  static const struct opt v4[] = {
      {"IP_PKTINFO", IPPROTO_IP, IP_PKTINFO, 1, true},
      {"IP_RECVTOS", IPPROTO_IP, IP_RECVTOS, 1, true},
      {"IP_MTU_DISCOVER", IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE, true},
  };
  /* The IPPROTO_IP options on an IPv6 socket govern its IPv4 (mapped)
   * traffic: the ECN bits of IPv4 datagrams arrive as IP_TOS, and DF on IPv4
   * sends follows IP_MTU_DISCOVER. Best effort: IPv6 works without them. */
  static const struct opt v6[] = {
      {"IPV6_V6ONLY", IPPROTO_IPV6, IPV6_V6ONLY, 0, true},
      {"IPV6_RECVPKTINFO", IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, true},
      {"IPV6_RECVTCLASS", IPPROTO_IPV6, IPV6_RECVTCLASS, 1, true},
      {"IPV6_MTU_DISCOVER", IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_PROBE, true},
      {"IP_RECVTOS", IPPROTO_IP, IP_RECVTOS, 1, false},
      {"IP_MTU_DISCOVER", IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE, false},
  };
  const struct opt *opts = family == AF_INET ? v4 : v6;
  size_t n = family == AF_INET ? FY_ARRAY_LEN(v4) : FY_ARRAY_LEN(v6);
  for (size_t i = 0; i < n; i++) {
    if (set_int(fd, opts[i].level, opts[i].name, opts[i].value) != 0 && opts[i].required)
      return fy_err_errno(err, errno, "UDP socket for %s: setsockopt %s", addr, opts[i].what);
  }
  return 0;
}

static bool gso_supported(int fd) {
  int v = 0;
  socklen_t len = sizeof(v);
  return getsockopt(fd, SOL_UDP, UDP_SEGMENT, &v, &len) == 0;
}

int fy_udp_open(struct fy_udp *u, uv_loop_t *loop, const char *addr, fy_udp_recv_cb cb, void *user,
                struct fy_err *err) {
  memset(u, 0, sizeof(*u));
  u->fd = -1;
  u->closing = true; /* until open succeeds, fy_udp_close is a no-op */
  if (!loop || !cb)
    return fy_err_set(err, FY_EINVAL, "UDP socket: no loop or no receive callback");
  struct sockaddr_storage sa;
  socklen_t sa_len = 0;
  int rc = fy_udp_parse_addr(addr, &sa, &sa_len, err);
  if (rc < 0)
    return rc;

  int family = sa.ss_family;
  FY_AUTOCLOSE int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
  if (fd < 0)
    return fy_err_errno(err, errno, "UDP socket for %s", addr);
  rc = set_options(fd, family, addr, err);
  if (rc < 0)
    return rc;
  int rcvbuf = grow_buffer(fd, SO_RCVBUF, SO_RCVBUFFORCE);
  int sndbuf = grow_buffer(fd, SO_SNDBUF, SO_SNDBUFFORCE);
  bool gso = gso_supported(fd);
  if (bind(fd, (const struct sockaddr *)&sa, sa_len) != 0)
    return fy_err_errno(err, errno, "bind UDP %s", addr);

  FY_AUTOFREE struct fy_udp_rx *rx = calloc(1, sizeof(*rx));
  if (!rx)
    return fy_err_set(err, FY_ENOMEM, "UDP socket for %s: out of memory for receive buffers", addr);
  rx->bound_len = sizeof(rx->bound);
  if (getsockname(fd, (struct sockaddr *)&rx->bound, &rx->bound_len) != 0)
    return fy_err_errno(err, errno, "UDP socket for %s: getsockname", addr);
  for (size_t i = 0; i < FY_UDP_RECV_BATCH; i++) {
    rx->iov[i].iov_base = rx->data[i];
    rx->iov[i].iov_len = FY_UDP_RECV_MAX;
    struct msghdr *m = &rx->msgs[i].msg_hdr;
    m->msg_name = &rx->names[i];
    m->msg_iov = &rx->iov[i];
    m->msg_iovlen = 1;
    m->msg_control = rx->ctrl[i].buf;
  }

  /* Last, because an initialised handle can only be undone by a loop turn. */
  rc = uv_poll_init_socket(loop, &u->handle, fd);
  if (rc < 0)
    return fy_err_set(err, FY_EIO, "UDP socket for %s: uv_poll_init: %s", addr, uv_strerror(rc));
  u->fd = FY_TAKE_FD(fd);
  u->family = family;
  u->gso = gso;
  u->rcvbuf = rcvbuf;
  u->sndbuf = sndbuf;
  u->cb = cb;
  u->user = user;
  u->rx = FY_TAKE(rx);
  u->closing = false;
  /* uv_poll_start cannot fail on an initialised handle (libuv >= 1.x returns 0). */
  uv_poll_start(&u->handle, UV_READABLE, on_readable);
  return 0;
}

int fy_udp_local_addr(const struct fy_udp *u, struct sockaddr_storage *out, socklen_t *len) {
  if (!u || u->fd < 0 || !out || !len)
    return FY_EINVAL;
  *len = sizeof(*out);
  if (getsockname(u->fd, (struct sockaddr *)out, len) != 0)
    return FY_EIO;
  return 0;
}

const struct fy_udp_stats *fy_udp_stats(const struct fy_udp *u) {
  return &u->stats;
}

static void on_closed(uv_handle_t *h) {
  struct fy_udp *u = from_handle((uv_poll_t *)h);
  free(u->rx);
  u->rx = NULL;
  if (u->closed)
    u->closed(u);
}

void fy_udp_close(struct fy_udp *u, void (*closed)(struct fy_udp *u)) {
  if (!u || u->closing)
    return;
  u->closing = true;
  u->closed = closed;
  /* uv_close stops the poll at once, so the descriptor can go now. */
  uv_close((uv_handle_t *)&u->handle, on_closed);
  close(u->fd);
  u->fd = -1;
}

/* --- sending ------------------------------------------------------------- */

/* Fills ctrl with UDP_SEGMENT (when gso > 0) and the ECN bits (when set);
 * returns the control length to put in msg_controllen. */
static size_t build_ctrl(union tx_ctrl *ctrl, const struct dest *d, uint16_t gso, uint8_t ecn) {
  memset(ctrl, 0, sizeof(*ctrl));
  size_t off = 0;
  if (gso > 0) {
    struct cmsghdr *c = (struct cmsghdr *)(void *)(ctrl->buf + off);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    memcpy(CMSG_DATA(c), &gso, sizeof(gso));
    off += CMSG_SPACE(sizeof(uint16_t));
  }
  if (ecn != 0) {
    struct cmsghdr *c = (struct cmsghdr *)(void *)(ctrl->buf + off);
    int tos = ecn;
    /* IPv4 to a mapped address from an IPv6 socket still takes IP_TOS:
     * Linux ignores IPV6_TCLASS on that path. */
    c->cmsg_level = d->v4_wire ? IPPROTO_IP : IPPROTO_IPV6;
    c->cmsg_type = d->v4_wire ? IP_TOS : IPV6_TCLASS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &tos, sizeof(tos));
    off += CMSG_SPACE(sizeof(int));
  }
  return off;
}

static size_t count_dgrams(size_t bytes, size_t seg) {
  return seg == 0 ? 1 : (bytes + seg - 1) / seg;
}

static int send_failed(struct fy_udp *u, int e, const struct dest *d, size_t dgram_len, size_t unsent,
                       struct fy_err *err) {
  if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) {
    u->stats.tx_eagain += unsent;
    return fy_err_set(err, FY_EAGAIN, "send: UDP socket buffer full");
  }
  u->stats.tx_errors += unsent;
  char text[FY_UDP_ADDR_MAX];
  fy_udp_format_addr(&d->addr.sa, text);
  if (e == EMSGSIZE)
    return fy_err_set(err, FY_ELIMIT, "send to %s: a %zu-byte datagram is larger than the path takes", text,
                      dgram_len);
  return fy_err_errno(err, e, "send to %s", text);
}

/* One sendmsg: a single datagram (gso 0) or a GSO run. */
static ssize_t send_msg(struct fy_udp *u, const struct dest *d, const uint8_t *data, size_t len, uint16_t gso,
                        uint8_t ecn) {
  union tx_ctrl ctrl;
  struct iovec iov = {.iov_base = unconst(data), .iov_len = len};
  struct msghdr m = {
      .msg_name = unconst(&d->addr),
      .msg_namelen = d->len,
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = ctrl.buf,
  };
  m.msg_controllen = build_ctrl(&ctrl, d, gso, ecn);
  if (m.msg_controllen == 0)
    m.msg_control = NULL;
  ssize_t r;
  do
    r = sendmsg(u->fd, &m, 0);
  while (r < 0 && errno == EINTR);
  return r;
}

/* The run data[0..len) as separate datagrams of seg bytes, SEND_BATCH per
 * sendmmsg. *done: bytes of whole datagrams sent. */
static int send_each(struct fy_udp *u, const struct dest *d, const uint8_t *data, size_t len, size_t seg,
                     uint8_t ecn, size_t unsent_after, size_t *done, struct fy_err *err) {
  union tx_ctrl ctrl;
  size_t ctrl_len = build_ctrl(&ctrl, d, 0, ecn);
  struct mmsghdr msgs[SEND_BATCH];
  struct iovec iov[SEND_BATCH];
  *done = 0;
  while (*done < len) {
    unsigned n = 0;
    for (size_t off = *done; off < len && n < SEND_BATCH; off += seg, n++) {
      size_t l = len - off < seg ? len - off : seg;
      iov[n].iov_base = unconst(data + off);
      iov[n].iov_len = l;
      msgs[n].msg_len = 0;
      msgs[n].msg_hdr = (struct msghdr){
          .msg_name = unconst(&d->addr),
          .msg_namelen = d->len,
          .msg_iov = &iov[n],
          .msg_iovlen = 1,
          .msg_control = ctrl_len ? ctrl.buf : NULL,
          .msg_controllen = ctrl_len,
      };
    }
    int r;
    do
      r = sendmmsg(u->fd, msgs, n, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0)
      return send_failed(u, errno, d, seg, count_dgrams(len - *done, seg) + unsent_after, err);
    for (int i = 0; i < r; i++) {
      u->stats.tx_datagrams++;
      u->stats.tx_bytes += iov[i].iov_len;
      *done += iov[i].iov_len;
    }
  }
  return 0;
}

int fy_udp_send_some(struct fy_udp *u, const struct sockaddr *remote, socklen_t remote_len,
                     const uint8_t *data, size_t len, size_t gso_size, uint8_t ecn, size_t *sent,
                     struct fy_err *err) {
  size_t sent_local = 0;
  if (!sent)
    sent = &sent_local;
  *sent = 0;
  if (!u || u->fd < 0 || u->closing)
    return fy_err_set(err, FY_EINVAL, "send: the UDP socket is closed");
  if (!data && len > 0)
    return fy_err_set(err, FY_EINVAL, "send: no data");
  if (ecn > 3)
    return fy_err_set(err, FY_EINVAL, "send: ECN value %u is not a 2-bit codepoint", (unsigned)ecn);
  if (gso_size > UDP_PAYLOAD_MAX)
    return fy_err_set(err, FY_ELIMIT, "send: segment size %zu is above the UDP maximum %d", gso_size,
                      UDP_PAYLOAD_MAX);
  struct dest d;
  int rc = make_dest(u, remote, remote_len, &d, err);
  if (rc < 0)
    return rc;

  if (gso_size == 0 || len <= gso_size) {
    if (send_msg(u, &d, data, len, 0, ecn) < 0)
      return send_failed(u, errno, &d, len, 1, err);
    u->stats.tx_datagrams++;
    u->stats.tx_bytes += len;
    *sent = len;
    return 0;
  }

  size_t seg = gso_size;
  size_t per_call = UDP_PAYLOAD_MAX / seg;
  if (per_call > GSO_MAX_SEGS)
    per_call = GSO_MAX_SEGS;
  while (*sent < len) {
    size_t left = len - *sent;
    size_t chunk = left < per_call * seg ? left : per_call * seg;
    size_t unsent_after = count_dgrams(left - chunk, seg);
    if (u->gso && chunk > seg) {
      if (send_msg(u, &d, data + *sent, chunk, (uint16_t)seg, ecn) >= 0) {
        size_t n = count_dgrams(chunk, seg);
        u->stats.tx_gso_calls++;
        u->stats.tx_datagrams += n;
        u->stats.tx_bytes += chunk;
        *sent += chunk;
        continue;
      }
      int e = errno;
      if (e == EIO) {
        /* The device cannot segment (no checksum offload): stop trying. */
        u->gso = false;
      } else if (e != EINVAL) {
        return send_failed(u, e, &d, seg, count_dgrams(left, seg), err);
      }
      /* EINVAL: this run does not suit UDP_SEGMENT (segment above the MTU,
       * say); one sendmsg per datagram gives the precise answer. */
    }
    size_t done = 0;
    rc = send_each(u, &d, data + *sent, chunk, seg, ecn, unsent_after, &done, err);
    *sent += done;
    if (rc < 0)
      return rc;
  }
  return 0;
}

int fy_udp_send(struct fy_udp *u, const struct sockaddr *remote, socklen_t remote_len, const uint8_t *data,
                size_t len, size_t gso_size, uint8_t ecn, struct fy_err *err) {
  size_t sent = 0;
  int rc = fy_udp_send_some(u, remote, remote_len, data, len, gso_size, ecn, &sent, err);
  if (rc == FY_EAGAIN && sent > 0) {
    fy_err_clear(err); /* the tail is counted in tx_eagain; QUIC treats it as lost */
    return 0;
  }
  return rc;
}

void fy_udp_on_batch_end(struct fy_udp *u, void (*fn)(void *user)) {
  u->batch_end = fn;
}
