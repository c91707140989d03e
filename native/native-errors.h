// Owns the conversion of a failed system call (errno + syscall name) into the JavaScript error class that
// src/io/native-binding.ts hands to the addon once at init (style anchor 11, after better-sqlite3's
// ThrowSqliteError): errno, a fixed code from a table with a fallback, and the syscall name.
#pragma once

#include <napi.h>

namespace walcast {

// A failed system call, as the I/O engine reports it. errnum == 0 means "no failure".
struct Failure {
  int errnum = 0;
  const char* syscall = nullptr;
};

// Stores the JS error constructor: (message, errno, code, syscall) => Error.
void SetErrorClass(Napi::Env env, Napi::Function error_class);

// The code for errnum ("EPIPE" ...), or "UNKNOWN_ERRNO_<n>" written into fallback.
const char* ErrnoCode(int errnum, char* fallback, size_t fallback_bytes);

// Builds the JS error; returns an empty value (with the constructor's exception pending) if that throws.
Napi::Value MakeNativeError(Napi::Env env, const Failure& failure);

// Throws the JS error built by MakeNativeError; never throws twice.
void ThrowNativeError(Napi::Env env, const Failure& failure);

}  // namespace walcast
