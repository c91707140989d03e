// Owns the kernel TLS (kTLS) probe: whether this kernel can attach the `tls` upper-layer protocol to a TCP socket
// and accept transmit keys on it, tried on a private loopback connection. walcast does not hand TLS sessions to
// the kernel (docs/security.md says why); the probe tells operators, the status API and the per-stream log what
// the kernel could do, so the missing piece is visible rather than guessed.
#pragma once

#include <napi.h>

namespace walcast {

struct KernelTlsProbe {
  // true when setsockopt(SOL_TCP, TCP_ULP, "tls") and setsockopt(SOL_TLS, TLS_TX, AES-GCM-128 keys) both worked.
  bool available = false;
  // errno of the step that failed (0 when available).
  int errnum = 0;
  // The failing step, or "setsockopt(TLS_TX)" when available (the last step tried).
  const char* step = "";
  // Whether the failure was the kTLS step itself (false: the loopback connection could not even be made).
  bool kernel_refused = false;
};

// Runs the probe: a loopback listener, a connected pair, the ULP and TLS_TX on the client end. Synchronous, takes
// microseconds, touches nothing but its own sockets (all closed before returning).
KernelTlsProbe ProbeKernelTls();

// Adds probeKernelTls() -> { state: 'available' | 'unavailable' | 'error', code, step } to the addon's exports.
void RegisterKernelTls(Napi::Env env, Napi::Object exports);

}  // namespace walcast
