// SPDX-License-Identifier: MIT
// libcurl on demand (issue 13: idle memory). The daemon does not link libcurl: it and what it
// pulls in (GnuTLS, Kerberos, LDAP, libssh2, nghttp2, ... about 4 MB of resident memory) are
// loaded with dlopen() the first time a libcurl function runs, which is the first file upload
// (http::createLazyHttpClient). Each libcurl function the http module calls is defined here,
// hidden (never exported, so the loaded libcurl cannot bind to these), and forwards to the real
// one; if libcurl cannot be loaded they fail the way libcurl fails (CURLE_FAILED_INIT, null).
// Loop thread only, like the rest of the module.
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <dlfcn.h>

#include <cstdarg>

#include "curl_loader.hpp"

namespace iothubd::http {
namespace {

/// The soname of Debian's libcurl4 (the OpenSSL flavour our headers come from).
constexpr const char* kLibrary = "libcurl.so.4";

struct Api {
  decltype(&::curl_global_init) globalInit = nullptr;
  decltype(&::curl_easy_init) easyInit = nullptr;
  decltype(&::curl_easy_cleanup) easyCleanup = nullptr;
  decltype(&::curl_easy_setopt) easySetopt = nullptr;
  decltype(&::curl_easy_getinfo) easyGetinfo = nullptr;
  decltype(&::curl_easy_pause) easyPause = nullptr;
  decltype(&::curl_easy_strerror) easyStrerror = nullptr;
  decltype(&::curl_multi_init) multiInit = nullptr;
  decltype(&::curl_multi_cleanup) multiCleanup = nullptr;
  decltype(&::curl_multi_setopt) multiSetopt = nullptr;
  decltype(&::curl_multi_add_handle) multiAddHandle = nullptr;
  decltype(&::curl_multi_remove_handle) multiRemoveHandle = nullptr;
  decltype(&::curl_multi_socket_action) multiSocketAction = nullptr;
  decltype(&::curl_multi_info_read) multiInfoRead = nullptr;
  decltype(&::curl_multi_strerror) multiStrerror = nullptr;
  decltype(&::curl_slist_append) slistAppend = nullptr;
  decltype(&::curl_slist_free_all) slistFreeAll = nullptr;
  std::optional<std::string> error;
};

template <class Fn>
bool resolve(void* library, const char* name, Fn& fn, std::optional<std::string>& error) {
  void* symbol = ::dlsym(library, name);
  if (symbol == nullptr) {
    error = std::string(kLibrary) + " has no " + name;
    return false;
  }
  fn = reinterpret_cast<Fn>(symbol);  // NOLINT: dlsym returns functions as void*
  return true;
}

Api load() {
  Api api;
  // Never closed: the handles libcurl gave out live as long as the process.
  void* library = ::dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* why = ::dlerror();
    api.error = std::string("cannot load ") + kLibrary + ": " + (why != nullptr ? why : "unknown");
    return api;
  }
  auto& e = api.error;
  const bool ok = resolve(library, "curl_global_init", api.globalInit, e) &&
                  resolve(library, "curl_easy_init", api.easyInit, e) &&
                  resolve(library, "curl_easy_cleanup", api.easyCleanup, e) &&
                  resolve(library, "curl_easy_setopt", api.easySetopt, e) &&
                  resolve(library, "curl_easy_getinfo", api.easyGetinfo, e) &&
                  resolve(library, "curl_easy_pause", api.easyPause, e) &&
                  resolve(library, "curl_easy_strerror", api.easyStrerror, e) &&
                  resolve(library, "curl_multi_init", api.multiInit, e) &&
                  resolve(library, "curl_multi_cleanup", api.multiCleanup, e) &&
                  resolve(library, "curl_multi_setopt", api.multiSetopt, e) &&
                  resolve(library, "curl_multi_add_handle", api.multiAddHandle, e) &&
                  resolve(library, "curl_multi_remove_handle", api.multiRemoveHandle, e) &&
                  resolve(library, "curl_multi_socket_action", api.multiSocketAction, e) &&
                  resolve(library, "curl_multi_info_read", api.multiInfoRead, e) &&
                  resolve(library, "curl_multi_strerror", api.multiStrerror, e) &&
                  resolve(library, "curl_slist_append", api.slistAppend, e) &&
                  resolve(library, "curl_slist_free_all", api.slistFreeAll, e);
  if (!ok) {
    return Api{.error = std::move(api.error)};
  }
  return api;
}

bool loaded = false;

/// The real functions, loaded by the first call; null members if that failed.
const Api& api() {
  static const Api instance = load();
  loaded = true;
  return instance;
}

/// CURLOPT_* and CURLMOPT_* encode the type of their argument in their value (curl.h,
/// CURLOPTTYPE_*): the one variadic argument is read as that type and passed on as it.
template <class Handle, class Option, class Setopt>
auto forwardSetopt(Setopt setopt, Handle* handle, Option option, va_list args) {
  const auto value = static_cast<long>(option);
  if (value < CURLOPTTYPE_OBJECTPOINT) {
    return setopt(handle, option, va_arg(args, long));
  }
  if (value < CURLOPTTYPE_FUNCTIONPOINT || value >= CURLOPTTYPE_BLOB) {
    return setopt(handle, option, va_arg(args, void*));
  }
  if (value < CURLOPTTYPE_OFF_T) {
    using AnyFunction = void (*)();
    return setopt(handle, option, va_arg(args, AnyFunction));
  }
  return setopt(handle, option, va_arg(args, curl_off_t));
}

}  // namespace

std::optional<std::string> curlLoadError() {
  return loaded ? api().error : std::nullopt;
}

}  // namespace iothubd::http

using iothubd::http::api;

// The definitions keep libcurl's own signatures and parameter names (curl.h): its enum options
// before `...` (what clang's -Wvarargs dislikes, and libcurl itself does the same) and its
// snake_case names.
// NOLINTBEGIN(readability-identifier-naming)
#ifdef __clang__
#pragma clang diagnostic ignored "-Wvarargs"
#endif
#define IOTHUBD_HIDDEN __attribute__((visibility("hidden")))
extern "C" {

IOTHUBD_HIDDEN CURLcode curl_global_init(long flags) {
  return api().globalInit ? api().globalInit(flags) : CURLE_FAILED_INIT;
}
IOTHUBD_HIDDEN CURL* curl_easy_init() {
  return api().easyInit ? api().easyInit() : nullptr;
}
IOTHUBD_HIDDEN void curl_easy_cleanup(CURL* curl) {
  if (api().easyCleanup) {
    api().easyCleanup(curl);
  }
}
IOTHUBD_HIDDEN CURLcode curl_easy_setopt(CURL* curl, CURLoption option, ...) {
  if (!api().easySetopt) {
    return CURLE_FAILED_INIT;
  }
  va_list args;
  va_start(args, option);
  const CURLcode rc = iothubd::http::forwardSetopt(api().easySetopt, curl, option, args);
  va_end(args);
  return rc;
}
IOTHUBD_HIDDEN CURLcode curl_easy_getinfo(CURL* curl, CURLINFO info, ...) {
  if (!api().easyGetinfo) {
    return CURLE_FAILED_INIT;
  }
  // Every CURLINFO_* takes a pointer to where the answer goes.
  va_list args;
  va_start(args, info);
  void* out = va_arg(args, void*);
  va_end(args);
  return api().easyGetinfo(curl, info, out);
}
IOTHUBD_HIDDEN CURLcode curl_easy_pause(CURL* handle, int bitmask) {
  return api().easyPause ? api().easyPause(handle, bitmask) : CURLE_FAILED_INIT;
}
IOTHUBD_HIDDEN const char* curl_easy_strerror(CURLcode code) {
  return api().easyStrerror ? api().easyStrerror(code) : "libcurl is not available";
}
IOTHUBD_HIDDEN CURLM* curl_multi_init() {
  return api().multiInit ? api().multiInit() : nullptr;
}
IOTHUBD_HIDDEN CURLMcode curl_multi_cleanup(CURLM* multi_handle) {
  return api().multiCleanup ? api().multiCleanup(multi_handle) : CURLM_INTERNAL_ERROR;
}
IOTHUBD_HIDDEN CURLMcode curl_multi_setopt(CURLM* multi_handle, CURLMoption option, ...) {
  if (!api().multiSetopt) {
    return CURLM_INTERNAL_ERROR;
  }
  va_list args;
  va_start(args, option);
  const CURLMcode rc = iothubd::http::forwardSetopt(api().multiSetopt, multi_handle, option, args);
  va_end(args);
  return rc;
}
IOTHUBD_HIDDEN CURLMcode curl_multi_add_handle(CURLM* multi_handle, CURL* curl_handle) {
  return api().multiAddHandle ? api().multiAddHandle(multi_handle, curl_handle)
                              : CURLM_INTERNAL_ERROR;
}
IOTHUBD_HIDDEN CURLMcode curl_multi_remove_handle(CURLM* multi_handle, CURL* curl_handle) {
  return api().multiRemoveHandle ? api().multiRemoveHandle(multi_handle, curl_handle)
                                 : CURLM_INTERNAL_ERROR;
}
IOTHUBD_HIDDEN CURLMcode curl_multi_socket_action(CURLM* multi_handle, curl_socket_t s,
                                                  int ev_bitmask, int* running_handles) {
  return api().multiSocketAction
             ? api().multiSocketAction(multi_handle, s, ev_bitmask, running_handles)
             : CURLM_INTERNAL_ERROR;
}
IOTHUBD_HIDDEN CURLMsg* curl_multi_info_read(CURLM* multi_handle, int* msgs_in_queue) {
  return api().multiInfoRead ? api().multiInfoRead(multi_handle, msgs_in_queue) : nullptr;
}
IOTHUBD_HIDDEN const char* curl_multi_strerror(CURLMcode code) {
  return api().multiStrerror ? api().multiStrerror(code) : "libcurl is not available";
}
IOTHUBD_HIDDEN curl_slist* curl_slist_append(curl_slist* list, const char* data) {
  return api().slistAppend ? api().slistAppend(list, data) : nullptr;
}
IOTHUBD_HIDDEN void curl_slist_free_all(curl_slist* list) {
  if (api().slistFreeAll) {
    api().slistFreeAll(list);
  }
}

}  // extern "C"
// NOLINTEND(readability-identifier-naming)
