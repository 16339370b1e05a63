#include "node/peerspec.h"

#include <ctype.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "net/udp.h"

#define HOST_NAME_MAX_LEN 253

/* One "host:port", taken apart and checked for shape. */
struct hostport {
  char host[FY_PEER_ADDR_TEXT_MAX];
  char port[8];
  bool numeric; /* an IP address literal: net/udp.h parses it */
};

static bool host_char(char c) {
  return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

/* Checks text's shape; errors start with `address "<text>"`. */
static int split_hostport(const char *text, struct hostport *hp, struct fy_err *err) {
  memset(hp, 0, sizeof(*hp));
  size_t n = strlen(text);
  if (n == 0)
    return fy_err_set(err, FY_EINVAL, "empty address; expected host:port");
  if (n >= FY_PEER_ADDR_TEXT_MAX)
    return fy_err_set(err, FY_ELIMIT, "address \"%.40s...\" is too long (at most %d characters)", text,
                      FY_PEER_ADDR_TEXT_MAX - 1);
  const char *port;
  size_t hn;
  const char *host = text;
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (!close)
      return fy_err_set(err, FY_EINVAL, "address \"%s\": '[' without a closing ']'", text);
    if (close[1] != ':')
      return fy_err_set(err, FY_EINVAL, "address \"%s\": expected ':port' after ']'", text);
    host = text + 1;
    hn = (size_t)(close - host);
    port = close + 2;
    hp->numeric = true;
  } else {
    const char *colon = strrchr(text, ':');
    if (!colon)
      return fy_err_set(err, FY_EINVAL, "address \"%s\" has no port; expected host:port", text);
    if (memchr(text, ':', (size_t)(colon - text)))
      return fy_err_set(err, FY_EINVAL,
                        "address \"%s\": an IPv6 address needs brackets, as in [fd00::1]:4433", text);
    hn = (size_t)(colon - text);
    port = colon + 1;
  }
  if (hn == 0)
    return fy_err_set(err, FY_EINVAL, "address \"%s\" has no host", text);
  memcpy(hp->host, host, hn);
  hp->host[hn] = '\0';
  size_t pn = strlen(port);
  unsigned long value = 0;
  bool digits = pn > 0 && pn <= 5;
  for (size_t i = 0; digits && i < pn; i++) {
    digits = isdigit((unsigned char)port[i]) != 0;
    value = value * 10 + (unsigned long)(port[i] - '0');
  }
  if (!digits || value == 0 || value > 65535)
    return fy_err_set(err, FY_EINVAL, "address \"%s\": port \"%s\" is not a number from 1 to 65535", text,
                      port);
  memcpy(hp->port, port, pn + 1);
  if (hp->numeric) {
    struct sockaddr_storage sa;
    socklen_t len;
    return fy_udp_parse_addr(text, &sa, &len, err);
  }
  bool dotted = true;
  for (size_t i = 0; i < hn; i++) {
    if (!host_char(hp->host[i]))
      return fy_err_set(err, FY_EINVAL, "address \"%s\": host \"%s\" has a bad character at %zu", text,
                        hp->host, i);
    dotted = dotted && (isdigit((unsigned char)hp->host[i]) || hp->host[i] == '.');
  }
  if (dotted) { /* looks like IPv4: must be one, never a name */
    hp->numeric = true;
    struct sockaddr_storage sa;
    socklen_t len;
    return fy_udp_parse_addr(text, &sa, &len, err);
  }
  if (hn > HOST_NAME_MAX_LEN || hp->host[0] == '-' || hp->host[0] == '.')
    return fy_err_set(err, FY_EINVAL, "address \"%s\": \"%s\" is not a host name", text, hp->host);
  return 0;
}

int fy_peerspec_parse(const char *text, struct fy_peerspec *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (!text)
    return fy_err_set(err, FY_EINVAL, "peer: nothing given; expected <node id>@<host:port>[,...]");
  const char *at = strrchr(text, '@');
  if (!at)
    return fy_err_set(err, FY_EINVAL, "peer \"%.80s\": no '@'; expected <node id>@<host:port>[,...]", text);
  size_t idn = (size_t)(at - text);
  char id[FY_NODEID_HEX_LEN + 2];
  if (idn == 0)
    return fy_err_set(err, FY_EINVAL, "peer \"%.80s\": no node id before '@'", text);
  if (idn > FY_NODEID_HEX_LEN)
    return fy_err_set(err, FY_EINVAL, "peer \"%.80s\": node id: %zu characters, expected %d hex digits", text,
                      idn, FY_NODEID_HEX_LEN);
  memcpy(id, text, idn);
  id[idn] = '\0';
  int rc = fy_nodeid_parse(id, &out->id, err);
  if (rc < 0) {
    fy_err_prefix(err, "peer \"%.80s\": node id", text);
    return rc;
  }
  const char *p = at + 1;
  if (*p == '\0')
    return fy_err_set(err, FY_EINVAL, "peer \"%.80s\": no address after '@'", text);
  for (size_t i = 0;; i++) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (i >= FY_PEER_ADDRS_MAX) {
      memset(out, 0, sizeof(*out));
      return fy_err_set(err, FY_ELIMIT, "peer \"%.80s\": more than %d addresses", text, FY_PEER_ADDRS_MAX);
    }
    if (n == 0) {
      memset(out, 0, sizeof(*out));
      return fy_err_set(err, FY_EINVAL, "peer \"%.80s\": address %zu is empty", text, i + 1);
    }
    if (n >= FY_PEER_ADDR_TEXT_MAX) {
      memset(out, 0, sizeof(*out));
      return fy_err_set(err, FY_ELIMIT, "peer \"%.80s\": address %zu is longer than %d characters", text,
                        i + 1, FY_PEER_ADDR_TEXT_MAX - 1);
    }
    memcpy(out->addrs[i], p, n);
    out->addrs[i][n] = '\0';
    struct hostport hp;
    if ((rc = split_hostport(out->addrs[i], &hp, err)) < 0) {
      fy_err_prefix(err, "peer \"%.80s\": address %zu", text, i + 1);
      memset(out, 0, sizeof(*out));
      return rc;
    }
    out->naddrs = i + 1;
    if (!end)
      break;
    p = end + 1;
  }
  return 0;
}

void fy_peerspec_format(const struct fy_peerspec *p, char *out, size_t size) {
  if (size == 0)
    return;
  char hex[FY_NODEID_HEX_LEN + 1];
  fy_nodeid_to_hex(&p->id, hex);
  int n = snprintf(out, size, "%s@", hex);
  for (size_t i = 0; i < p->naddrs && i < FY_PEER_ADDRS_MAX && n >= 0 && (size_t)n < size; i++)
    n += snprintf(out + n, size - (size_t)n, "%s%s", i ? "," : "", p->addrs[i]);
}

int fy_addr_resolve(const char *text, struct sockaddr_storage *out, struct fy_err *err) {
  memset(out, 0, sizeof(*out));
  if (!text)
    return fy_err_set(err, FY_EINVAL, "no address given");
  struct hostport hp;
  int rc = split_hostport(text, &hp, err);
  if (rc < 0)
    return rc;
  if (hp.numeric) {
    socklen_t len;
    return fy_udp_parse_addr(text, out, &len, err);
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICSERV};
  struct addrinfo *res = NULL;
  int gai = getaddrinfo(hp.host, hp.port, &hints, &res);
  if (gai != 0) {
    bool unknown = gai == EAI_NONAME;
#ifdef EAI_NODATA
    unknown = unknown || gai == EAI_NODATA;
#endif
    return fy_err_set(err, unknown ? FY_ENOENT : FY_EIO, "address \"%s\": cannot resolve \"%s\": %s", text,
                      hp.host, gai_strerror(gai));
  }
  rc = fy_err_set(err, FY_ENOENT, "address \"%s\": \"%s\" has no IPv4 or IPv6 address", text, hp.host);
  for (const struct addrinfo *a = res; a; a = a->ai_next) {
    if ((a->ai_family == AF_INET || a->ai_family == AF_INET6) && a->ai_addrlen <= sizeof(*out)) {
      memcpy(out, a->ai_addr, a->ai_addrlen);
      fy_err_clear(err);
      rc = 0;
      break;
    }
  }
  freeaddrinfo(res);
  return rc;
}

int fy_addrs_resolve(char (*texts)[FY_PEER_ADDR_TEXT_MAX], size_t n, struct sockaddr_storage *out,
                     struct fy_err *err) {
  if (n == 0)
    return fy_err_set(err, FY_ENOENT, "no address to resolve");
  struct fy_err first = {0};
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    struct fy_err e = {0};
    if (fy_addr_resolve(texts[i], &out[k], &e) == 0)
      k++;
    else if (first.code == 0)
      first = e;
  }
  if (k == 0)
    return fy_err_set(err, FY_ENOENT, "none of %zu addresses resolves; %s", n, first.msg);
  return (int)k;
}

void fy_addr_format(const struct sockaddr *sa, char *out, size_t size) {
  if (size == 0)
    return;
  char text[FY_UDP_ADDR_MAX];
  fy_udp_format_addr(sa, text);
  snprintf(out, size, "%s", text);
}
