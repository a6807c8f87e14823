#pragma once
// Ownership of libcurl's C resources and the one checked shim per kind of curl call. Private to
// the transport: no other file of the module includes a curl header.

#include <curl/curl.h>
#include <fmt/format.h>

#include <memory>
#include <string>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote::curl {

struct EasyDeleter {
  void operator()(CURL* easy) const noexcept { curl_easy_cleanup(easy); }
};
struct MultiDeleter {
  void operator()(CURLM* multi) const noexcept { curl_multi_cleanup(multi); }
};
struct SlistDeleter {
  void operator()(curl_slist* list) const noexcept { curl_slist_free_all(list); }
};
struct MimeDeleter {
  void operator()(curl_mime* mime) const noexcept { curl_mime_free(mime); }
};
using Easy = std::unique_ptr<CURL, EasyDeleter>;
using Multi = std::unique_ptr<CURLM, MultiDeleter>;
using Slist = std::unique_ptr<curl_slist, SlistDeleter>;
using Mime = std::unique_ptr<curl_mime, MimeDeleter>;

inline Easy make_easy() {
  Easy easy(curl_easy_init());
  if (!easy)
    throw InternalError("curl_easy_init failed (out of memory, or curl_global_init was not called in main)");
  return easy;
}

inline Multi make_multi() {
  Multi multi(curl_multi_init());
  if (!multi)
    throw InternalError("curl_multi_init failed (out of memory, or curl_global_init was not called in main)");
  return multi;
}

/// Every curl_easy_setopt goes through here, so a rejected option is never silently ignored.
template <typename T>
void set(CURL* easy, CURLoption option, T value, const char* what) {
  const CURLcode rc = curl_easy_setopt(easy, option, value);
  if (rc != CURLE_OK)
    throw InternalError(fmt::format("curl_easy_setopt({}) failed: {}", what, curl_easy_strerror(rc)));
}

inline void check(CURLcode rc, const char* what) {
  if (rc != CURLE_OK) throw InternalError(fmt::format("{} failed: {}", what, curl_easy_strerror(rc)));
}

/// A multipart/form-data body of `easy`: add parts with add_field / add_file, then set it with
/// CURLOPT_MIMEPOST. Part data is copied into the mime structure.
inline Mime make_mime(CURL* easy) {
  Mime mime(curl_mime_init(easy));
  if (!mime) throw InternalError("curl_mime_init failed (out of memory)");
  return mime;
}

inline curl_mimepart* add_part(curl_mime* mime, const char* name) {
  curl_mimepart* part = curl_mime_addpart(mime);
  if (part == nullptr) throw InternalError("curl_mime_addpart failed (out of memory)");
  check(curl_mime_name(part, name), "curl_mime_name");
  return part;
}

/// A plain form field `name` = `value`.
inline void add_field(curl_mime* mime, const char* name, const std::string& value) {
  check(curl_mime_data(add_part(mime, name), value.data(), value.size()), "curl_mime_data");
}

/// A file field `name` with `filename` and content type `type`.
inline void add_file(curl_mime* mime, const char* name, const char* filename, const char* type,
                     const void* data, std::size_t size) {
  curl_mimepart* part = add_part(mime, name);
  check(curl_mime_data(part, static_cast<const char*>(data), size), "curl_mime_data");
  check(curl_mime_filename(part, filename), "curl_mime_filename");
  check(curl_mime_type(part, type), "curl_mime_type");
}

inline void check_multi(CURLMcode rc, const char* what) {
  if (rc != CURLM_OK) throw InternalError(fmt::format("{} failed: {}", what, curl_multi_strerror(rc)));
}

/// Appends one header line; `value` empty is sent as an empty header (curl's "name;" form).
inline void append_header(Slist& list, const std::string& name, const std::string& value) {
  const std::string line = value.empty() ? name + ";" : name + ": " + value;
  curl_slist* grown = curl_slist_append(list.get(), line.c_str());
  if (grown == nullptr) throw InternalError(fmt::format("curl_slist_append of header \"{}\" failed", name));
  static_cast<void>(list.release());
  list.reset(grown);
}

}  // namespace ndif::remote::curl
