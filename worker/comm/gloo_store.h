// Lets an llmt Store back Gloo's gloo::rendezvous::Store, which reports
// errors by throwing. Used by GlooCollective for Gloo's full-mesh connect.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "gloo/common/error.h"
#include "gloo/rendezvous/store.h"
#include "worker/comm/store.h"

namespace llmt::comm {

class GlooStoreAdapter final : public gloo::rendezvous::Store {
 public:
  // `timeout` bounds get() and the untimed wait(), which Gloo's interface
  // calls without one.
  GlooStoreAdapter(llmt::comm::Store* store, std::chrono::milliseconds timeout)
      : store_(store), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    Check(store_->Set(key, std::string(data.begin(), data.end())));
  }
  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::string> v = store_->Get(key, timeout_);
    Check(v.status());
    return std::vector<char>(v->begin(), v->end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    // Gloo spells "no timeout" as zero; ours are always bounded.
    Check(store_->Wait(keys, timeout == gloo::kNoTimeout ? timeout_ : timeout));
  }

 private:
  static void Check(const absl::Status& s) {
    if (!s.ok()) throw gloo::IoException(s.ToString());
  }
  llmt::comm::Store* store_;
  std::chrono::milliseconds timeout_;
};

}  // namespace llmt::comm
