/* Peer address specs: how a peer is written on command lines and in config.
 *
 *   <node id>@<addr>[,<addr>...]
 *
 * The node id is the 64 hex digits of its key (what `ferry key show`
 * prints). Each addr is "host:port": "1.2.3.4:4433", "[fd00::1]:4433"
 * (IPv6 needs its brackets), or "coord.example.net:4433"; the port is decimal
 * 1..65535. Parsing checks the shape only and keeps the addresses as text
 * (names are resolved when they are used, at start-up: fy_addrs_resolve).
 * Every error names the part that is wrong, and the spec it came from.
 *
 * The resolvers are blocking (getaddrinfo for names): for start-up and the
 * command line only, never on a running loop. A numeric address never
 * touches the resolver. */
#ifndef FY_NODE_PEERSPEC_H
#define FY_NODE_PEERSPEC_H

#include <stddef.h>
#include <sys/socket.h>

#include "base/err.h"
#include "crypto/nodeid.h"

#define FY_PEER_ADDRS_MAX 8
#define FY_PEER_ADDR_TEXT_MAX 256 /* one addr's text, with the NUL */

struct fy_peerspec {
  struct fy_nodeid id;
  char addrs[FY_PEER_ADDRS_MAX][FY_PEER_ADDR_TEXT_MAX];
  size_t naddrs; /* 1..FY_PEER_ADDRS_MAX after a successful parse */
};

/* Parses text into *out. FY_EINVAL for a malformed spec (no '@', a bad node
 * id, an empty address, no port, a bad port or host, an IPv6 address without
 * brackets), FY_ELIMIT for more than FY_PEER_ADDRS_MAX addresses or one
 * longer than FY_PEER_ADDR_TEXT_MAX - 1. */
int fy_peerspec_parse(const char *text, struct fy_peerspec *out, struct fy_err *err);

/* Writes the spec as fy_peerspec_parse reads it, cut to size (with a NUL)
 * when it does not fit. */
void fy_peerspec_format(const struct fy_peerspec *p, char *out, size_t size);

/* Resolves one "host:port": a numeric address directly, a name with
 * getaddrinfo (the first address it gives). FY_EINVAL for a malformed text,
 * FY_ENOENT for a name that does not resolve, FY_EIO when the resolver
 * fails otherwise. */
int fy_addr_resolve(const char *text, struct sockaddr_storage *out, struct fy_err *err);

/* Resolves texts[0..n) into out (room for n), skipping the ones that fail,
 * in order. Returns how many resolved; FY_ENOENT (with the first failure's
 * message) when none did. */
int fy_addrs_resolve(char (*texts)[FY_PEER_ADDR_TEXT_MAX], size_t n, struct sockaddr_storage *out,
                     struct fy_err *err);

/* "1.2.3.4:4433", "[fd00::1]:4433" (as net/udp.h formats them; "?" for a
 * family that is neither), cut to size with a NUL. */
void fy_addr_format(const struct sockaddr *sa, char *out, size_t size);

#endif
