/* The UDP socket under ferry's QUIC endpoint: one bound socket on the process's
 * libuv loop, batched receive with the metadata QUIC needs, batched send.
 *
 * Receiving. libuv's uv_udp_recv_start cannot hand over ancillary data, and
 * QUIC needs two pieces of it: the local address each datagram arrived at
 * (to answer from the same address on a multi-homed host, and to notice path
 * changes) and the ECN bits. So the socket is made here, watched with a
 * uv_poll_t, and read with recvmmsg: up to FY_UDP_RECV_BATCH datagrams per
 * call, at most FY_UDP_RECV_BUDGET per wakeup so one busy peer cannot starve
 * the loop (the poll is level-triggered: whatever is left wakes it again).
 * Each datagram is handed to the callback as a struct fy_udp_pkt whose
 * pointers stay valid only during that call. A datagram longer than
 * FY_UDP_RECV_MAX is dropped and counted (QUIC never sends one: its
 * datagrams stay at or below the path MTU). GRO stays off, so every
 * datagram arrives on its own.
 *
 * Addresses. An IPv6 socket is dual-stack (IPV6_V6ONLY=0). On it, IPv4 peers
 * appear as IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, AF_INET6), exactly as
 * the kernel reports them, for remote and local alike; nothing is converted.
 * fy_udp_send accepts either form on either kind of socket and converts as
 * needed (AF_INET on an IPv6 socket is sent to its mapped form; a mapped
 * address on an IPv4 socket is sent to the IPv4 address), so an address
 * received can always be answered as is.
 *
 * Sending is synchronous (sendmsg, never queued): the QUIC layer paces and
 * retries, and learns from FY_EAGAIN that the socket buffer is full. With
 * gso_size > 0 the buffer holds several datagrams of gso_size bytes (the last
 * may be shorter), sent as one UDP_SEGMENT sendmsg where the kernel supports
 * it (checked once at open, and switched off for good if the kernel later
 * refuses it with EIO, as it does on devices without checksum offload), else
 * with sendmmsg, one datagram per message. Every datagram of a call carries the
 * same ECN bits (IP_TOS / IPV6_TCLASS control message).
 *
 * Don't-fragment. Path MTU discovery is set to IP_PMTUDISC_PROBE /
 * IPV6_PMTUDISC_PROBE: the DF bit is set and the kernel never fragments, but
 * ICMP "too big" messages do not lower a cached path MTU that would turn our
 * sends into EMSGSIZE. QUIC runs its own packetization-layer PMTU discovery
 * (RFC 9000 section 14) and must not trust unauthenticated ICMP for it.
 *
 * The struct sketched for the endpoint named its handle a uv_udp_t; it is a
 * uv_poll_t, because libuv's UDP handle would own the receive path we replace.
 * `handle.data` and casting &handle to uv_handle_t work as for any handle. */
#ifndef FY_NET_UDP_H
#define FY_NET_UDP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "base/err.h"

#define FY_UDP_RECV_MAX 2048              /* largest datagram received; longer ones are dropped and counted */
#define FY_UDP_RECV_BATCH 32              /* datagrams per recvmmsg */
#define FY_UDP_RECV_BUDGET 256            /* datagrams per loop wakeup */
#define FY_UDP_BUF_WANT (4 * 1024 * 1024) /* SO_RCVBUF / SO_SNDBUF asked for */
#define FY_UDP_ADDR_MAX 72                /* "[v6%scope]:port" text, with the NUL */

/* ECN codepoints (RFC 3168), the low two bits of TOS / traffic class. */
enum fy_udp_ecn {
  FY_UDP_ECN_NOT_ECT = 0,
  FY_UDP_ECT_1 = 1,
  FY_UDP_ECT_0 = 2,
  FY_UDP_ECN_CE = 3,
};

/* One received datagram; every pointer is valid only during the callback. */
struct fy_udp_pkt {
  const uint8_t *data;
  size_t len;
  const struct sockaddr *remote;
  socklen_t remote_len;
  const struct sockaddr *local; /* the address it arrived at (IP_PKTINFO / IPV6_PKTINFO), port filled */
  socklen_t local_len;
  uint8_t ecn; /* ECN bits from IP_TOS / IPV6_TCLASS, 0 if unknown */
};

typedef void (*fy_udp_recv_cb)(void *user, const struct fy_udp_pkt *pkt);

/* Counters since open. A received datagram counts once: in rx_datagrams
 * (delivered to the callback) or in rx_truncated. A datagram to send counts in
 * tx_datagrams, tx_errors or tx_eagain; tx_eagain counts refusals, so one the
 * caller retries counts there and again when it goes out. */
struct fy_udp_stats {
  uint64_t rx_datagrams; /* delivered to the callback */
  uint64_t rx_bytes;
  uint64_t rx_truncated;   /* dropped: longer than FY_UDP_RECV_MAX */
  uint64_t rx_errors;      /* recvmmsg failures other than EAGAIN, and socket errors */
  uint64_t rx_wakeups;     /* poll callbacks that read */
  uint64_t rx_budget_hits; /* wakeups that stopped at FY_UDP_RECV_BUDGET with data maybe left */
  uint64_t tx_datagrams;   /* accepted by the kernel */
  uint64_t tx_bytes;
  uint64_t tx_eagain;    /* not sent: socket buffer full (FY_EAGAIN; the caller may retry them) */
  uint64_t tx_errors;    /* not sent: any other error */
  uint64_t tx_gso_calls; /* sendmsg calls that carried UDP_SEGMENT */
};

struct fy_udp_rx;

/* Embedded in the endpoint, owned by it. Fields below `handle` are private
 * except where marked read-only. */
struct fy_udp {
  uv_poll_t handle; /* watches fd; handle.data is free for the owner (set it after fy_udp_open) */
  int fd;
  int family; /* AF_INET or AF_INET6; read-only */
  bool gso;   /* UDP_SEGMENT is used; read-only except that tests clear it to force the fallback */
  bool closing;
  /* SO_RCVBUF / SO_SNDBUF as the kernel granted them, read-only: getsockopt's
   * figures, which on Linux are double the granted request (the kernel adds
   * room for its own bookkeeping). */
  int rcvbuf;
  int sndbuf;
  fy_udp_recv_cb cb;
  void *user;
  void (*batch_end)(void *user); /* optional: after each recvmmsg batch was delivered */
  void (*closed)(struct fy_udp *u);
  struct fy_udp_rx *rx; /* one allocation: receive buffers, addresses, control space, headers */
  struct fy_udp_stats stats;
};

/* Calls fn(user) after every batch of received datagrams has been handed to
 * the receive callback: the moment to answer them all at once, before the
 * next batch, so replies to a burst do not wait for the whole burst. */
void fy_udp_on_batch_end(struct fy_udp *u, void (*fn)(void *user));

/* Parses "host:port" with a numeric host: "0.0.0.0:0", "127.0.0.1:4433",
 * "[::]:4433", "[::1]:0", "[fe80::1%eth0]:4433". IPv6 needs its brackets, the
 * port is decimal 0..65535, host names are refused (ferry binds and dials
 * numeric addresses; name resolution would block the loop). Errors quote the
 * text and say what is wrong. */
int fy_udp_parse_addr(const char *text, struct sockaddr_storage *out, socklen_t *len, struct fy_err *err);

/* Formats an IPv4 or IPv6 socket address as fy_udp_parse_addr reads it
 * ("127.0.0.1:4433", "[::ffff:127.0.0.1]:4433"); "?" for anything else. */
void fy_udp_format_addr(const struct sockaddr *sa, char out[FY_UDP_ADDR_MAX]);

/* Binds one socket to addr (see fy_udp_parse_addr) and starts receiving on
 * loop: every datagram is passed to cb(user, pkt). Socket options: dual-stack
 * for IPv6, IP_PKTINFO / IPV6_RECVPKTINFO, IP_RECVTOS / IPV6_RECVTCLASS, PMTU
 * probe mode (DF set, see above), SO_RCVBUF / SO_SNDBUF of FY_UDP_BUF_WANT as
 * far as the kernel grants (SO_*BUFFORCE when privileged; see u->rcvbuf,
 * u->sndbuf). On failure nothing is left open and u need not be closed. */
int fy_udp_open(struct fy_udp *u, uv_loop_t *loop, const char *addr, fy_udp_recv_cb cb, void *user,
                struct fy_err *err);

/* The bound address, with the port the kernel picked for ":0". */
int fy_udp_local_addr(const struct fy_udp *u, struct sockaddr_storage *out, socklen_t *len);

/* Sends data to remote: one datagram, or with gso_size > 0 and len > gso_size
 * a run of gso_size-byte datagrams (the last may be shorter), every one with
 * ECN bits ecn (0..3). Returns 0 when every datagram was handed to the kernel,
 * FY_EAGAIN when the socket buffer is full (fy_udp_send_some says how much
 * of the run went out before that; fy_udp_send counts the rest as tx_eagain
 * and returns FY_EAGAIN only if nothing went out, else 0: QUIC recovers the
 * tail as lost packets), FY_ELIMIT when a datagram is larger than the path
 * allows (EMSGSIZE) or gso_size is beyond what UDP_SEGMENT takes, FY_EINVAL for
 * bad arguments, or FY_EIO / FY_EPERM from the kernel (unreachable, firewall). */
int fy_udp_send(struct fy_udp *u, const struct sockaddr *remote, socklen_t remote_len, const uint8_t *data,
                size_t len, size_t gso_size, uint8_t ecn, struct fy_err *err);

/* As fy_udp_send, but *sent always says how many bytes of data went out
 * (whole datagrams: len on success, else a multiple of gso_size), so after
 * FY_EAGAIN the caller can retry the rest (counted in tx_eagain meanwhile). */
int fy_udp_send_some(struct fy_udp *u, const struct sockaddr *remote, socklen_t remote_len,
                     const uint8_t *data, size_t len, size_t gso_size, uint8_t ecn, size_t *sent,
                     struct fy_err *err);

const struct fy_udp_stats *fy_udp_stats(const struct fy_udp *u);

/* Stops receiving at once (no callback after this returns, also when called
 * from inside one), closes the socket, and calls closed(u) (may be NULL) once
 * libuv has closed the handle; only then may u's memory go. */
void fy_udp_close(struct fy_udp *u, void (*closed)(struct fy_udp *u));

#endif
