// Kernel TLS probe (see kernel-tls.h). The kernel only lets the `tls` ULP onto an ESTABLISHED TCP socket, so the
// probe needs a real connection, not a socketpair: it listens on 127.0.0.1 port 0, connects, accepts, then tries
// the two calls a kTLS sender would make after its handshake. The TLS_TX keys are zeros: nothing is ever sent on
// the socket, the call only proves the kernel has the record layer and the AES-GCM cipher it needs.
#include "kernel-tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "native-errors.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

namespace walcast {

namespace {

// Closes the descriptor when the probe returns, whichever step it stopped at.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

KernelTlsProbe SetupFailure(const char* step) { return {false, errno, step, false}; }

}  // namespace

KernelTlsProbe ProbeKernelTls() {
  Fd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (listener.get() < 0) return SetupFailure("socket");
  struct sockaddr_in address {};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(listener.get(), reinterpret_cast<struct sockaddr*>(&address), sizeof(address)) != 0) return SetupFailure("bind");
  if (listen(listener.get(), 1) != 0) return SetupFailure("listen");
  if (getsockname(listener.get(), reinterpret_cast<struct sockaddr*>(&address), &length) != 0) return SetupFailure("getsockname");
  Fd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (client.get() < 0) return SetupFailure("socket");
  // Loopback connect completes the handshake in the kernel before returning (the backlog has room for one).
  if (connect(client.get(), reinterpret_cast<struct sockaddr*>(&address), sizeof(address)) != 0) return SetupFailure("connect");
  Fd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (accepted.get() < 0) return SetupFailure("accept");

  static const char kUlpName[] = "tls";
  if (setsockopt(client.get(), SOL_TCP, TCP_ULP, kUlpName, sizeof(kUlpName)) != 0) {
    return {false, errno, "setsockopt(TCP_ULP)", true};
  }
  struct tls12_crypto_info_aes_gcm_128 keys;
  std::memset(&keys, 0, sizeof(keys));
  keys.info.version = TLS_1_2_VERSION;
  keys.info.cipher_type = TLS_CIPHER_AES_GCM_128;
  if (setsockopt(client.get(), SOL_TLS, TLS_TX, &keys, sizeof(keys)) != 0) {
    return {false, errno, "setsockopt(TLS_TX)", true};
  }
  return {true, 0, "setsockopt(TLS_TX)", false};
}

namespace {

// probeKernelTls(): state 'available' (both calls worked), 'unavailable' (the kernel refused one: code is its
// errno name, e.g. ENOENT when the tls module is neither built in nor loadable), or 'error' (the loopback
// connection itself failed, so nothing is known about kTLS).
Napi::Value ProbeKernelTlsJs(const Napi::CallbackInfo& info) {
  const KernelTlsProbe probe = ProbeKernelTls();
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  char fallback[32];
  result.Set("state", Napi::String::New(env, probe.available ? "available" : probe.kernel_refused ? "unavailable" : "error"));
  result.Set("code", Napi::String::New(env, probe.available ? "OK" : ErrnoCode(probe.errnum, fallback, sizeof(fallback))));
  result.Set("step", Napi::String::New(env, probe.step));
  return result;
}

}  // namespace

void RegisterKernelTls(Napi::Env env, Napi::Object exports) {
  exports.Set("probeKernelTls", Napi::Function::New(env, ProbeKernelTlsJs, "probeKernelTls"));
}

}  // namespace walcast
