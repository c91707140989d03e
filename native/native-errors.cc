// Owns errno -> code mapping and the construction of native errors for JavaScript (see native-errors.h).
#include "native-errors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace walcast {

namespace {

struct AddonData {
  Napi::FunctionReference error_class;
};

struct ErrnoName {
  int errnum;
  const char* code;
};

// The errnos the engine can meet on sockets, files, mmap and io_uring. Anything else gets the fallback name.
constexpr ErrnoName kErrnoNames[] = {
    {EPERM, "EPERM"},           {ENOENT, "ENOENT"},         {EINTR, "EINTR"},
    {EIO, "EIO"},               {EBADF, "EBADF"},           {EAGAIN, "EAGAIN"},
    {ENOMEM, "ENOMEM"},         {EACCES, "EACCES"},         {EFAULT, "EFAULT"},
    {EBUSY, "EBUSY"},           {EEXIST, "EEXIST"},         {ENODEV, "ENODEV"},
    {EINVAL, "EINVAL"},         {ENFILE, "ENFILE"},         {EMFILE, "EMFILE"},
    {EFBIG, "EFBIG"},           {ENOSPC, "ENOSPC"},         {ESPIPE, "ESPIPE"},
    {EPIPE, "EPIPE"},           {ERANGE, "ERANGE"},         {ENOSYS, "ENOSYS"},
    {EOVERFLOW, "EOVERFLOW"},   {ENOTSOCK, "ENOTSOCK"},     {EOPNOTSUPP, "EOPNOTSUPP"},
    {ENETDOWN, "ENETDOWN"},     {ENETUNREACH, "ENETUNREACH"}, {ECONNABORTED, "ECONNABORTED"},
    {ECONNRESET, "ECONNRESET"}, {ENOBUFS, "ENOBUFS"},       {ENOTCONN, "ENOTCONN"},
    {ESHUTDOWN, "ESHUTDOWN"},   {ETIMEDOUT, "ETIMEDOUT"},   {EHOSTUNREACH, "EHOSTUNREACH"},
    {ECANCELED, "ECANCELED"},   {ENXIO, "ENXIO"},           {ENOPROTOOPT, "ENOPROTOOPT"},
    {ECONNREFUSED, "ECONNREFUSED"}, {EADDRNOTAVAIL, "EADDRNOTAVAIL"},
};

}  // namespace

void SetErrorClass(Napi::Env env, Napi::Function error_class) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data == nullptr) {
    data = new AddonData();
    env.SetInstanceData<AddonData>(data);
  }
  data->error_class = Napi::Persistent(error_class);
}

const char* ErrnoCode(int errnum, char* fallback, size_t fallback_bytes) {
  for (const ErrnoName& entry : kErrnoNames) {
    if (entry.errnum == errnum) return entry.code;
  }
  std::snprintf(fallback, fallback_bytes, "UNKNOWN_ERRNO_%d", errnum);
  return fallback;
}

Napi::Value MakeNativeError(Napi::Env env, const Failure& failure) {
  char fallback[32];
  const char* code = ErrnoCode(failure.errnum, fallback, sizeof fallback);
  const char* syscall = failure.syscall != nullptr ? failure.syscall : "unknown";
  std::string message = std::string(syscall) + " failed: " + code + " (" + std::strerror(failure.errnum) + ")";
  AddonData* data = env.GetInstanceData<AddonData>();
  if (data == nullptr || data->error_class.IsEmpty()) {
    // init() was not called: still an Error, with the same fields set by hand.
    Napi::Error error = Napi::Error::New(env, message);
    error.Set("errno", Napi::Number::New(env, failure.errnum));
    error.Set("code", Napi::String::New(env, code));
    error.Set("syscall", Napi::String::New(env, syscall));
    return error.Value();
  }
  return data->error_class.New({Napi::String::New(env, message), Napi::Number::New(env, failure.errnum),
                                Napi::String::New(env, code), Napi::String::New(env, syscall)});
}

void ThrowNativeError(Napi::Env env, const Failure& failure) {
  Napi::Value error = MakeNativeError(env, failure);
  // If the constructor threw, its exception is already pending: do not throw a second time.
  if (error.IsEmpty() || env.IsExceptionPending()) return;
  Napi::Error(env, error).ThrowAsJavaScriptException();
}

}  // namespace walcast
