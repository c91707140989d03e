// Owns the JavaScript surface of the addon: argument checks (REQUIRE_* macros, style anchor 12), the Engine
// class wrapping io-engine.h, event delivery back to JavaScript, and a self-test used by probeNative().
// Every protocol byte is built in TypeScript; this file only moves the bytes it is given.
#include <napi.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <string>
#include <memory>
#include <vector>

#include "crc32c.h"
#include "io-engine.h"
#include "kernel-tls.h"
#include "native-errors.h"
#include "tcp-congestion.h"

namespace walcast {

namespace {

// Uniform argument checks: TypeScript validated already; these keep a wrong call from reaching a syscall.
#define REQUIRE_ARGUMENT_COUNT(info, count)                                                        \
  if ((info).Length() < (count)) {                                                                 \
    Napi::TypeError::New((info).Env(), "expected " #count " arguments").ThrowAsJavaScriptException(); \
    return (info).Env().Undefined();                                                               \
  }

// A number JavaScript can hold exactly that is whole and within [minimum, maximum] (NaN is not).
inline bool IsWholeNumberIn(double value, double minimum, double maximum) {
  return value >= minimum && value <= maximum && value == static_cast<double>(static_cast<int64_t>(value));
}

#define REQUIRE_ARGUMENT_INTEGER(info, index, name, target, minimum, maximum)                           \
  if (!(info)[index].IsNumber()) {                                                                      \
    Napi::TypeError::New((info).Env(), name " must be a number").ThrowAsJavaScriptException();          \
    return (info).Env().Undefined();                                                                    \
  }                                                                                                     \
  {                                                                                                     \
    const double value_ = (info)[index].As<Napi::Number>().DoubleValue();                              \
    if (!IsWholeNumberIn(value_, static_cast<double>(minimum), static_cast<double>(maximum))) {         \
      Napi::RangeError::New((info).Env(), name " is out of range").ThrowAsJavaScriptException();        \
      return (info).Env().Undefined();                                                                  \
    }                                                                                                   \
    target = static_cast<decltype(target)>(value_);                                                     \
  }

#define REQUIRE_ARGUMENT_BUFFER(info, index, name, target, maximum_bytes)                                \
  if (!(info)[index].IsBuffer()) {                                                                       \
    Napi::TypeError::New((info).Env(), name " must be a Buffer").ThrowAsJavaScriptException();           \
    return (info).Env().Undefined();                                                                     \
  }                                                                                                      \
  target = (info)[index].As<Napi::Buffer<uint8_t>>();                                                    \
  if (target.Length() == 0 || target.Length() > (maximum_bytes)) {                                       \
    Napi::RangeError::New((info).Env(), name " has a bad length").ThrowAsJavaScriptException();          \
    return (info).Env().Undefined();                                                                     \
  }

// `what` names the type in the message ("a Float64Array"); target's type is the Napi typed array class.
#define REQUIRE_ARGUMENT_TYPED_ARRAY(info, index, name, array_type, what, target)                        \
  if (!(info)[index].IsTypedArray() || (info)[index].As<Napi::TypedArray>().TypedArrayType() != (array_type)) { \
    Napi::TypeError::New((info).Env(), name " must be " what).ThrowAsJavaScriptException();               \
    return (info).Env().Undefined();                                                                      \
  }                                                                                                       \
  target = (info)[index].As<decltype(target)>();

#define REQUIRE_ARGUMENT_FUNCTION(info, index, name, target)                                            \
  if (!(info)[index].IsFunction()) {                                                                    \
    Napi::TypeError::New((info).Env(), name " must be a function").ThrowAsJavaScriptException();        \
    return (info).Env().Undefined();                                                                    \
  }                                                                                                     \
  target = (info)[index].As<Napi::Function>();

// Engine objects carry this tag (style anchor 12): a method called with a foreign `this` (another addon's wrapped
// object, say) is refused before any member is touched.
constexpr napi_type_tag kEngineTypeTag = {0x77616c6361737400ULL, 0x656e67696e650001ULL};

#define REQUIRE_ENGINE_THIS(info)                                                                        \
  {                                                                                                      \
    bool tagged_ = false;                                                                                \
    if (napi_check_object_type_tag((info).Env(), (info).This(), &kEngineTypeTag, &tagged_) != napi_ok || \
        !tagged_) {                                                                                      \
      Napi::TypeError::New((info).Env(), "not a walcast Engine").ThrowAsJavaScriptException();           \
      return (info).Env().Undefined();                                                                   \
    }                                                                                                    \
  }

// JS numbers hold stream ids and offsets exactly up to 2^53.
constexpr int64_t kSafeIntegerMax = (int64_t{1} << 53) - 1;
constexpr int kFdMax = 1 << 30;
// Streams one sendChunkBatch call takes: the connection ceiling is far below (config/limits.ts CONNECTIONS_MAX).
constexpr size_t kBatchStreamsMax = 1 << 20;
// The self-test sends this many bytes through each path.
constexpr size_t kSelfTestBytes = 64 * 1024;

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod<&EngineWrap::OpenStream>("openStream"),
                        InstanceMethod<&EngineWrap::SendChunk>("sendChunk"),
                        InstanceMethod<&EngineWrap::SendChunkBatch>("sendChunkBatch"),
                        InstanceMethod<&EngineWrap::SendChunkRun>("sendChunkRun"),
                        InstanceMethod<&EngineWrap::SendMessage>("sendMessage"),
                        InstanceMethod<&EngineWrap::Flush>("flush"),
                        InstanceMethod<&EngineWrap::CloseStream>("closeStream"),
                        InstanceMethod<&EngineWrap::BytesSent>("bytesSent"),
                        InstanceMethod<&EngineWrap::Prefetch>("prefetch"),
                        InstanceMethod<&EngineWrap::Stats>("stats"),
                        InstanceMethod<&EngineWrap::Close>("close")});
  }

  // new Engine(strategy: 0 | 1 | 2, onEvent: (kind, id, error?) => void)
  explicit EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) { Construct(info); }

 private:
  Napi::Value Construct(const Napi::CallbackInfo& info) {
    REQUIRE_ARGUMENT_COUNT(info, 2);
    int strategy = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "strategy", strategy, 0, 2);
    Napi::Function on_event;
    REQUIRE_ARGUMENT_FUNCTION(info, 1, "onEvent", on_event);
    Napi::Env env = info.Env();
    napi_type_tag_object(env, info.This(), &kEngineTypeTag);
    on_event_ = Napi::Persistent(on_event);
    async_context_ = std::make_unique<Napi::AsyncContext>(env, "walcast_native_io");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "no libuv loop").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Failure failure;
    engine_ = Engine::Create(static_cast<Strategy>(strategy), loop,
                             [this](std::vector<Event>& events) { Deliver(events); }, &failure);
    if (!engine_) ThrowNativeError(env, failure);
    return env.Undefined();
  }

  // The engine while it is open; nullptr before construction succeeded or after close().
  Engine* Live() const { return engine_ && !engine_->closed() ? engine_.get() : nullptr; }

  bool RequireOpen(Napi::Env env) {
    if (Live() != nullptr) return true;
    Napi::Error::New(env, "the native engine is closed").ThrowAsJavaScriptException();
    return false;
  }

  // openStream(fd) -> stream id
  Napi::Value OpenStream(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 1);
    int fd = -1;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
    if (!RequireOpen(info.Env())) return info.Env().Undefined();
    Failure failure;
    const uint64_t id = engine_->OpenStream(fd, &failure);
    if (id == 0) {
      ThrowNativeError(info.Env(), failure);
      return info.Env().Undefined();
    }
    return Napi::Number::New(info.Env(), static_cast<double>(id));
  }

  // sendChunk(id, header, fd, offset, count) -> 0 sent | 1 queued | 2 queued, wait for a space event
  Napi::Value SendChunk(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 5);
    uint64_t id = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "id", id, 1, kSafeIntegerMax);
    Napi::Buffer<uint8_t> header;
    REQUIRE_ARGUMENT_BUFFER(info, 1, "header", header, kHeaderBytesMax);
    int fd = -1;
    REQUIRE_ARGUMENT_INTEGER(info, 2, "fd", fd, 0, kFdMax);
    uint64_t offset = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 3, "offset", offset, 0, kSafeIntegerMax);
    size_t count = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 4, "count", count, 1, kPayloadBytesMax);
    if (!RequireOpen(info.Env())) return info.Env().Undefined();
    Failure failure;
    int status = engine_->SendChunk(id, header.Data(), header.Length(), fd, offset, count, &failure);
    return StatusOrThrow(info.Env(), status, failure);
  }

  // sendChunkBatch(ids: Float64Array, count, header, fd, offset, bytes, statuses: Int32Array) -> undefined when no
  // stream failed, else an array holding the NativeIoError of each failed stream at its index (statuses[i] = -1).
  Napi::Value SendChunkBatch(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 7);
    Napi::Float64Array ids;
    REQUIRE_ARGUMENT_TYPED_ARRAY(info, 0, "ids", napi_float64_array, "a Float64Array", ids);
    size_t count = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 1, "count", count, 1, kBatchStreamsMax);
    Napi::Buffer<uint8_t> header;
    REQUIRE_ARGUMENT_BUFFER(info, 2, "header", header, kHeaderBytesMax);
    int fd = -1;
    REQUIRE_ARGUMENT_INTEGER(info, 3, "fd", fd, 0, kFdMax);
    uint64_t offset = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 4, "offset", offset, 0, kSafeIntegerMax);
    size_t bytes = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 5, "bytes", bytes, 1, kPayloadBytesMax);
    Napi::Int32Array statuses;
    REQUIRE_ARGUMENT_TYPED_ARRAY(info, 6, "statuses", napi_int32_array, "an Int32Array", statuses);
    if (ids.ElementLength() < count || statuses.ElementLength() < count) {
      Napi::RangeError::New(info.Env(), "ids and statuses must hold count entries").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::vector<uint64_t> stream_ids(count);
    for (size_t index = 0; index < count; index++) {
      const double id = ids[index];
      if (!IsWholeNumberIn(id, 1, static_cast<double>(kSafeIntegerMax))) {
        Napi::RangeError::New(info.Env(), "ids holds a value that is not a stream id").ThrowAsJavaScriptException();
        return info.Env().Undefined();
      }
      stream_ids[index] = static_cast<uint64_t>(id);
    }
    if (!RequireOpen(info.Env())) return info.Env().Undefined();
    std::vector<Failure> failures(count);
    engine_->SendChunkBatch(stream_ids.data(), count, header.Data(), header.Length(), fd, offset, bytes,
                            statuses.Data(), failures.data());
    Napi::Array errors;
    for (size_t index = 0; index < count; index++) {
      if (statuses[index] != kSendFailed) continue;
      if (errors.IsEmpty()) errors = Napi::Array::New(info.Env());
      Napi::Value error = MakeNativeError(info.Env(), failures[index]);
      if (error.IsEmpty()) return info.Env().Undefined();  // the error class threw: that exception is pending
      errors.Set(static_cast<uint32_t>(index), error);
    }
    return errors.IsEmpty() ? info.Env().Undefined() : Napi::Value(errors);
  }

  // sendChunkRun(id, headers, headerBytes, ranges: Float64Array, first, count, result: Int32Array) -> undefined.
  // Chunks first..first+count-1 of a run: chunk i's header is headers[i * headerBytes, (i + 1) * headerBytes), its
  // payload ranges[3i] (fd), ranges[3i + 1] (offset), ranges[3i + 2] (bytes). result[0] = chunks taken, result[1] =
  // the last one's status as sendChunk's; throws the NativeIoError when a chunk failed (result[0] still counts the
  // chunks taken before it).
  Napi::Value SendChunkRun(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 7);
    uint64_t id = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "id", id, 1, kSafeIntegerMax);
    Napi::Buffer<uint8_t> headers;
    REQUIRE_ARGUMENT_BUFFER(info, 1, "headers", headers, kHeaderBytesMax * kRunChunksMax);
    size_t header_bytes = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 2, "headerBytes", header_bytes, 1, kHeaderBytesMax);
    Napi::Float64Array ranges;
    REQUIRE_ARGUMENT_TYPED_ARRAY(info, 3, "ranges", napi_float64_array, "a Float64Array", ranges);
    size_t first = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 4, "first", first, 0, kRunChunksMax - 1);
    size_t count = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 5, "count", count, 1, kRunChunksMax);
    Napi::Int32Array result;
    REQUIRE_ARGUMENT_TYPED_ARRAY(info, 6, "result", napi_int32_array, "an Int32Array of 2", result);
    if (result.ElementLength() < 2) {
      Napi::TypeError::New(info.Env(), "result must be an Int32Array of 2").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    const size_t end = first + count;
    if (end > kRunChunksMax || ranges.ElementLength() < end * 3 || headers.Length() < end * header_bytes) {
      Napi::RangeError::New(info.Env(), "headers and ranges must hold every chunk of the run").ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
    std::array<Engine::FileRange, kRunChunksMax> run;
    for (size_t index = 0; index < count; index++) {
      const double fd = ranges[(first + index) * 3];
      const double offset = ranges[(first + index) * 3 + 1];
      const double bytes = ranges[(first + index) * 3 + 2];
      if (!IsWholeNumberIn(fd, 0, kFdMax) || !IsWholeNumberIn(offset, 0, static_cast<double>(kSafeIntegerMax)) ||
          !IsWholeNumberIn(bytes, 1, static_cast<double>(kPayloadBytesMax))) {
        Napi::RangeError::New(info.Env(), "ranges holds a chunk that is not a file range").ThrowAsJavaScriptException();
        return info.Env().Undefined();
      }
      run[index] = {static_cast<int>(fd), static_cast<uint64_t>(offset), static_cast<size_t>(bytes)};
    }
    if (!RequireOpen(info.Env())) return info.Env().Undefined();
    Failure failure;
    size_t accepted = 0;
    const int status = engine_->SendChunkRun(id, headers.Data() + first * header_bytes, header_bytes, run.data(), count,
                                             &accepted, &failure);
    result[0] = static_cast<int32_t>(accepted);
    result[1] = status;
    if (status == kSendFailed) ThrowNativeError(info.Env(), failure);
    return info.Env().Undefined();
  }

  // sendMessage(id, bytes) -> status as sendChunk
  Napi::Value SendMessage(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 2);
    uint64_t id = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "id", id, 1, kSafeIntegerMax);
    Napi::Buffer<uint8_t> bytes;
    REQUIRE_ARGUMENT_BUFFER(info, 1, "bytes", bytes, kMessageBytesMax);
    if (!RequireOpen(info.Env())) return info.Env().Undefined();
    Failure failure;
    int status = engine_->SendMessage(id, bytes.Data(), bytes.Length(), &failure);
    return StatusOrThrow(info.Env(), status, failure);
  }

  Napi::Value StatusOrThrow(Napi::Env env, int status, const Failure& failure) {
    if (status == kSendFailed) {
      ThrowNativeError(env, failure);
      return env.Undefined();
    }
    return Napi::Number::New(env, status);
  }

  // flush(id) -> true when nothing is queued; else a drained (or failed) event follows
  Napi::Value Flush(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 1);
    uint64_t id = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "id", id, 1, kSafeIntegerMax);
    if (Live() == nullptr) return Napi::Boolean::New(info.Env(), true);
    return Napi::Boolean::New(info.Env(), engine_->Flush(id));
  }

  Napi::Value CloseStream(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 1);
    uint64_t id = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "id", id, 1, kSafeIntegerMax);
    if (Live() != nullptr) engine_->CloseStream(id);
    return info.Env().Undefined();
  }

  Napi::Value BytesSent(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 1);
    uint64_t id = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "id", id, 1, kSafeIntegerMax);
    return Napi::Number::New(info.Env(), Live() != nullptr ? static_cast<double>(engine_->BytesSent(id)) : 0.0);
  }

  // prefetch(fd, offset, count, token[, readBytes]) -> true when cached now; else one prefetched event with token
  // follows. readBytes (default count): the range goes to the readahead threads as reads of at most that many bytes,
  // one after another (Engine::Prefetch).
  Napi::Value Prefetch(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    REQUIRE_ARGUMENT_COUNT(info, 4);
    int fd = -1;
    REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
    uint64_t offset = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 1, "offset", offset, 0, kSafeIntegerMax);
    size_t count = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 2, "count", count, 1, kPrefetchBytesMax);
    uint64_t token = 0;
    REQUIRE_ARGUMENT_INTEGER(info, 3, "token", token, 1, kSafeIntegerMax);
    size_t read_bytes = count;
    if (info.Length() > 4 && !info[4].IsUndefined()) {
      REQUIRE_ARGUMENT_INTEGER(info, 4, "readBytes", read_bytes, 1, kPrefetchBytesMax);
    }
    if (!RequireOpen(info.Env())) return info.Env().Undefined();
    Failure failure;
    int status = engine_->Prefetch(fd, offset, count, read_bytes, token, &failure);
    if (status < 0) {
      ThrowNativeError(info.Env(), failure);
      return info.Env().Undefined();
    }
    return Napi::Boolean::New(info.Env(), status == 1);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    Napi::Object stats = Napi::Object::New(info.Env());
    stats.Set("streams", Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->stream_count()) : 0));
    stats.Set("mappedFiles", Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->mapped_file_count()) : 0));
    stats.Set("ring", Napi::Boolean::New(info.Env(), engine_ && engine_->ring_ready()));
    stats.Set("sendsInFlight", Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->sends_in_flight()) : 0));
    stats.Set("readsInFlight", Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->reads_in_flight()) : 0));
    stats.Set("idleReadFallbacks", Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->idle_read_fallbacks()) : 0));
    stats.Set("readaheadJobs", Napi::Number::New(info.Env(), engine_ ? static_cast<double>(engine_->readahead_jobs()) : 0));
    stats.Set("lowPriorityReads", Napi::Boolean::New(info.Env(), engine_ && engine_->low_priority_reads()));
    // Why not (ioprio_set refused, or the A/B switch): the backend logs it once.
    if (engine_ && !engine_->low_priority_reads() && engine_->low_priority_failure().syscall != nullptr) {
      const Failure& why = engine_->low_priority_failure();
      char fallback[32];
      stats.Set("lowPriorityReadsFailure", Napi::String::New(info.Env(), why.errnum == 0 ? std::string(why.syscall) : std::string(why.syscall) + ": " + ErrnoCode(why.errnum, fallback, sizeof fallback)));
    }
    return stats;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    REQUIRE_ENGINE_THIS(info);
    // Closed, not destroyed: close() may be called from inside an event callback, which runs on the engine's
    // stack; the object goes with this wrapper.
    if (engine_) engine_->Close();
    return info.Env().Undefined();
  }

  // Runs on the JS thread from the uv_poll / uv_idle callbacks, after the engine finished its turn.
  void Deliver(std::vector<Event>& events) {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    for (const Event& event : events) {
      if (Live() == nullptr) return;  // closed by an earlier callback of this batch
      Napi::Value error = env.Undefined();
      if (event.kind == EventKind::kFailed) error = MakeNativeError(env, event.failure);
      if (error.IsEmpty()) error = env.Undefined();
      on_event_.MakeCallback(Value(), {Napi::Number::New(env, static_cast<int>(event.kind)),
                                       Napi::Number::New(env, static_cast<double>(event.id)), error},
                             *async_context_);
      if (env.IsExceptionPending()) {
        // Nobody above us could catch it: report it as Node reports any uncaught exception.
        Napi::Error uncaught = env.GetAndClearPendingException();
        napi_fatal_exception(env, uncaught.Value());
      }
    }
  }

  std::unique_ptr<Engine> engine_;
  Napi::FunctionReference on_event_;
  std::unique_ptr<Napi::AsyncContext> async_context_;
};

// Sends a header + kSelfTestBytes from a memfd over a socketpair with sendfile and with sendmsg, reads it back.
bool SelfTestPath(bool use_sendfile, Failure* failure) {
  int sockets[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets) != 0) {
    *failure = {errno, "socketpair"};
    return false;
  }
  UniqueFd sender(sockets[0]);
  UniqueFd receiver(sockets[1]);
  UniqueFd file(memfd_create("walcast-self-test", MFD_CLOEXEC));
  if (file.get() < 0) {
    *failure = {errno, "memfd_create"};
    return false;
  }
  std::vector<uint8_t> expected(kSelfTestBytes);
  for (size_t index = 0; index < expected.size(); index++) expected[index] = static_cast<uint8_t>(index * 7 + 3);
  if (write(file.get(), expected.data(), expected.size()) != static_cast<ssize_t>(expected.size())) {
    *failure = {errno, "write"};
    return false;
  }
  ssize_t sent = 0;
  if (use_sendfile) {
    off_t offset = 0;
    sent = sendfile(sender.get(), file.get(), &offset, expected.size());
  } else {
    void* base = mmap(nullptr, expected.size(), PROT_READ, MAP_SHARED, file.get(), 0);
    if (base == MAP_FAILED) {
      *failure = {errno, "mmap"};
      return false;
    }
    struct iovec iov = {base, expected.size()};
    struct msghdr message {};
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    sent = sendmsg(sender.get(), &message, MSG_NOSIGNAL);
    munmap(base, expected.size());
  }
  if (sent != static_cast<ssize_t>(expected.size())) {
    *failure = {sent < 0 ? errno : EIO, use_sendfile ? "sendfile" : "sendmsg"};
    return false;
  }
  std::vector<uint8_t> received(expected.size());
  size_t got = 0;
  while (got < received.size()) {
    ssize_t count = read(receiver.get(), received.data() + got, received.size() - got);
    if (count <= 0) {
      *failure = {count < 0 ? errno : EIO, "read"};
      return false;
    }
    got += static_cast<size_t>(count);
  }
  if (received != expected) {
    *failure = {EIO, "self-test compare"};
    return false;
  }
  return true;
}

// selfTest() -> { ok: true, ring: boolean } or throws the native error of the first failing call.
Napi::Value SelfTest(const Napi::CallbackInfo& info) {
  Failure failure;
  if (!SelfTestPath(true, &failure) || !SelfTestPath(false, &failure)) {
    ThrowNativeError(info.Env(), failure);
    return info.Env().Undefined();
  }
  io_uring ring;
  const bool ring_ok = io_uring_queue_init(4, &ring, 0) == 0;
  if (ring_ok) io_uring_queue_exit(&ring);
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("ok", Napi::Boolean::New(info.Env(), true));
  result.Set("ring", Napi::Boolean::New(info.Env(), ring_ok));
  return result;
}

// init(ErrorClass): the constructor (message, errno, code, syscall) used for every native error.
Napi::Value Init(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  Napi::Function error_class;
  REQUIRE_ARGUMENT_FUNCTION(info, 0, "ErrorClass", error_class);
  SetErrorClass(info.Env(), error_class);
  return info.Env().Undefined();
}

// readaheadStopWhileReadingForTest(path) -> { liveAfterStop, wakesAfterStop, liveAtEnd }: starts readahead threads
// whose reads go into a one-page pipe, submits a read of `path` (at least 1 MiB), closes its own descriptor of the
// file at once (the job reads a dup), takes a page out of the pipe (so a thread is in that read, blocked on the full
// pipe), then stops the threads: that must return while the read is still blocked (liveAfterStop counts the
// threads still running). Then it closes the pipe (the read fails with EPIPE) and waits, bounded, for the threads to
// exit; wakesAfterStop counts eventfd writes after the stop (none may come).
Napi::Value ReadaheadStopWhileReadingForTest(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  if (!info[0].IsString()) {
    Napi::TypeError::New(info.Env(), "path must be a string").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  int pipe_fds[2];
  if (wake.get() < 0 || pipe2(pipe_fds, O_CLOEXEC) != 0) {
    ThrowNativeError(info.Env(), {errno, "pipe2"});
    return info.Env().Undefined();
  }
  UniqueFd pipe_read(pipe_fds[0]);
  fcntl(pipe_fds[1], F_SETPIPE_SZ, 4096);
  Failure failure;
  std::unique_ptr<ReadaheadThread> threads = ReadaheadThread::StartWithSinkForTest(wake.get(), pipe_fds[1], &failure);
  if (threads == nullptr) {
    ThrowNativeError(info.Env(), failure);
    return info.Env().Undefined();
  }
  const int file = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file < 0 || !threads->Submit(1, file, 0, 1024 * 1024)) {
    ThrowNativeError(info.Env(), {file < 0 ? errno : EAGAIN, file < 0 ? "open" : "Submit"});
    if (file >= 0) close(file);
    return info.Env().Undefined();
  }
  close(file);
  // Blocking read of one page: the thread is in its read once it wrote into the pipe; it then refills the pipe and blocks.
  char page[4096];
  if (read(pipe_read.get(), page, sizeof page) <= 0) {
    ThrowNativeError(info.Env(), {errno == 0 ? EIO : errno, "read"});
    return info.Env().Undefined();
  }
  uint64_t wakes_before = 0;
  (void)!read(wake.get(), &wakes_before, sizeof wakes_before);
  threads.reset();
  const size_t live_after_stop = ReadaheadThread::LiveThreadsForTest();
  pipe_read.reset();
  for (int turn = 0; turn < 1000 && ReadaheadThread::LiveThreadsForTest() > 0; turn++) usleep(10 * 1000);
  uint64_t wakes_after = 0;
  (void)!read(wake.get(), &wakes_after, sizeof wakes_after);
  Napi::Object result = Napi::Object::New(info.Env());
  result.Set("liveAfterStop", Napi::Number::New(info.Env(), static_cast<double>(live_after_stop)));
  result.Set("wakesAfterStop", Napi::Number::New(info.Env(), static_cast<double>(wakes_after)));
  result.Set("liveAtEnd", Napi::Number::New(info.Env(), static_cast<double>(ReadaheadThread::LiveThreadsForTest())));
  return result;
}

// readaheadSinkForTest(fd): the next Engine's readahead threads read into fd (it owns it from then on), so a test can
// hold their reads in a full pipe: a read starved for as long as the test likes (Engine::TakeBackStarvedReadaheads).
Napi::Value ReadaheadSinkForTest(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  int fd = -1;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
  const int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) {
    ThrowNativeError(info.Env(), {errno, "fcntl"});
    return info.Env().Undefined();
  }
  Engine::SetReadaheadSinkForTest(own);
  return info.Env().Undefined();
}

// errorForTest(errno, syscall): builds the error a failed call would raise (for the error-shape tests).
Napi::Value ErrorForTest(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  int errnum = 0;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "errno", errnum, 1, 1 << 20);
  return MakeNativeError(info.Env(), {errnum, "errorForTest"});
}

// dropCache(fd, offset, length): posix_fadvise(DONTNEED), so tests and the benchmark can make a file cold
// without dropping the whole machine's page cache.
Napi::Value DropCache(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 3);
  int fd = -1;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
  int64_t offset = 0;
  REQUIRE_ARGUMENT_INTEGER(info, 1, "offset", offset, 0, kSafeIntegerMax);
  int64_t length = 0;
  REQUIRE_ARGUMENT_INTEGER(info, 2, "length", length, 0, kSafeIntegerMax);
  int status = posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  if (status != 0) ThrowNativeError(info.Env(), {status, "posix_fadvise"});
  return info.Env().Undefined();
}

// residentBytes(fd, offset, length) -> bytes of the range in page cache and up to date (mincore on a private
// mapping, whole pages; the file must be at least offset + length long), so tests can check what a prefetch left.
Napi::Value ResidentBytes(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 3);
  int fd = -1;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
  int64_t offset = 0;
  REQUIRE_ARGUMENT_INTEGER(info, 1, "offset", offset, 0, kSafeIntegerMax);
  int64_t length = 0;
  REQUIRE_ARGUMENT_INTEGER(info, 2, "length", length, 1, kSafeIntegerMax);
  const int64_t page = sysconf(_SC_PAGESIZE);
  const int64_t first = offset / page * page;
  const size_t span = static_cast<size_t>(offset + length - first);
  void* base = mmap(nullptr, span, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(first));
  if (base == MAP_FAILED) {
    ThrowNativeError(info.Env(), {errno, "mmap"});
    return info.Env().Undefined();
  }
  std::vector<unsigned char> pages((span + page - 1) / page);
  const int status = mincore(base, span, pages.data());
  const int mincore_errno = errno;
  munmap(base, span);
  if (status != 0) {
    ThrowNativeError(info.Env(), {mincore_errno, "mincore"});
    return info.Env().Undefined();
  }
  int64_t resident = 0;
  for (unsigned char entry : pages) resident += (entry & 1) != 0 ? page : 0;
  return Napi::Number::New(info.Env(), static_cast<double>(resident));
}

// adviseRandom(fd): posix_fadvise(RANDOM), which turns the kernel's readahead off for the open file (every
// descriptor dup'ed from it), so tests can check a prefetch that gets no help from readahead.
Napi::Value AdviseRandom(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  int fd = -1;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
  int status = posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  if (status != 0) ThrowNativeError(info.Env(), {status, "posix_fadvise"});
  return info.Env().Undefined();
}

// A congestion control name: a string of 1..15 characters (TCP_CA_NAME_MAX - 1); TypeScript checked its alphabet.
bool ReadCongestionName(const Napi::CallbackInfo& info, size_t index, char* out) {
  if (!info[index].IsString()) {
    Napi::TypeError::New(info.Env(), "name must be a string").ThrowAsJavaScriptException();
    return false;
  }
  const std::string name = info[index].As<Napi::String>().Utf8Value();
  if (name.empty() || name.size() >= kCongestionNameBytes || name.find('\0') != std::string::npos) {
    Napi::RangeError::New(info.Env(), "name must be 1-15 characters").ThrowAsJavaScriptException();
    return false;
  }
  std::memset(out, 0, kCongestionNameBytes);
  std::memcpy(out, name.data(), name.size());
  return true;
}

// setTcpCongestion(fd, name): TCP_CONGESTION on a socket (src/net/tcp-congestion.ts); throws the NativeIoError.
Napi::Value SetTcpCongestionJs(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 2);
  int fd = -1;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
  char name[kCongestionNameBytes];
  if (!ReadCongestionName(info, 1, name)) return info.Env().Undefined();
  Failure failure = SetTcpCongestion(fd, name);
  if (failure.errnum != 0) ThrowNativeError(info.Env(), failure);
  return info.Env().Undefined();
}

// tcpCongestion(fd) -> the socket's congestion control name.
Napi::Value TcpCongestionJs(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  int fd = -1;
  REQUIRE_ARGUMENT_INTEGER(info, 0, "fd", fd, 0, kFdMax);
  char name[kCongestionNameBytes];
  Failure failure = GetTcpCongestion(fd, name);
  if (failure.errnum != 0) {
    ThrowNativeError(info.Env(), failure);
    return info.Env().Undefined();
  }
  return Napi::String::New(info.Env(), name);
}

// tryTcpCongestion(name): throws the NativeIoError a socket of its own got for this name (ENOENT, EPERM ...).
Napi::Value TryTcpCongestionJs(const Napi::CallbackInfo& info) {
  REQUIRE_ARGUMENT_COUNT(info, 1);
  char name[kCongestionNameBytes];
  if (!ReadCongestionName(info, 0, name)) return info.Env().Undefined();
  Failure failure = TryTcpCongestion(name);
  if (failure.errnum != 0) ThrowNativeError(info.Env(), failure);
  return info.Env().Undefined();
}

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("dropCache", Napi::Function::New(env, DropCache, "dropCache"));
  exports.Set("residentBytes", Napi::Function::New(env, ResidentBytes, "residentBytes"));
  exports.Set("adviseRandom", Napi::Function::New(env, AdviseRandom, "adviseRandom"));
  exports.Set("setTcpCongestion", Napi::Function::New(env, SetTcpCongestionJs, "setTcpCongestion"));
  exports.Set("tcpCongestion", Napi::Function::New(env, TcpCongestionJs, "tcpCongestion"));
  exports.Set("tryTcpCongestion", Napi::Function::New(env, TryTcpCongestionJs, "tryTcpCongestion"));
  exports.Set("init", Napi::Function::New(env, Init, "init"));
  exports.Set("Engine", EngineWrap::Define(env));
  exports.Set("selfTest", Napi::Function::New(env, SelfTest, "selfTest"));
  exports.Set("readaheadStopWhileReadingForTest", Napi::Function::New(env, ReadaheadStopWhileReadingForTest, "readaheadStopWhileReadingForTest"));
  exports.Set("readaheadSinkForTest", Napi::Function::New(env, ReadaheadSinkForTest, "readaheadSinkForTest"));
  exports.Set("errorForTest", Napi::Function::New(env, ErrorForTest, "errorForTest"));
  exports.Set("headerBytesMax", Napi::Number::New(env, static_cast<double>(kHeaderBytesMax)));
  exports.Set("messageBytesMax", Napi::Number::New(env, static_cast<double>(kMessageBytesMax)));
  exports.Set("payloadBytesMax", Napi::Number::New(env, static_cast<double>(kPayloadBytesMax)));
  exports.Set("runChunksMax", Napi::Number::New(env, static_cast<double>(kRunChunksMax)));
  exports.Set("prefetchBytesMax", Napi::Number::New(env, static_cast<double>(kPrefetchBytesMax)));
  // What one stream may hold on the heap (tests bound server memory with these): its record and a full queue of
  // units. Payloads are never copied (sendfile or a shared mapping of the file), so no WAL bytes are counted here.
  exports.Set("queuedUnitsHardMax", Napi::Number::New(env, static_cast<double>(kQueuedUnitsHardMax)));
  exports.Set("streamRecordBytes", Napi::Number::New(env, static_cast<double>(sizeof(Stream))));
  exports.Set("sendUnitBytes", Napi::Number::New(env, static_cast<double>(sizeof(SendUnit))));
  RegisterCrc32c(env, exports);
  RegisterKernelTls(env, exports);
  return exports;
}

}  // namespace

}  // namespace walcast

// NODE_API_MODULE pastes the name into an identifier, so it needs an unqualified one.
static Napi::Object InitWalcastNative(Napi::Env env, Napi::Object exports) { return walcast::InitModule(env, exports); }

NODE_API_MODULE(walcast_native, InitWalcastNative)
