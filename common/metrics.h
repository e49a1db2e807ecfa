// A small Prometheus metrics registry: counters, gauges and histograms with
// labels, rendered in the text exposition format 0.0.4 (Debian 12 packages no
// Prometheus C++ client). Metric updates are lock-free atomics on a child
// obtained once from its family (keep the pointer on hot paths); only
// creating a new label combination and rendering take a lock.
//
//   metrics::Registry reg;
//   auto& rpcs = reg.AddCounter("llmt_rpcs_total", "RPCs handled.", {"method", "code"});
//   rpcs.WithLabels({"CreateJob", "OK"})->Inc();
//   std::string text = reg.Render();
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace llmt::metrics {

class Counter {
 public:
  void Inc(double v = 1.0);  // v must be >= 0 (negative increments are ignored)
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Inc(double v = 1.0) { value_.fetch_add(v, std::memory_order_relaxed); }
  void Dec(double v = 1.0) { value_.fetch_sub(v, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // `bounds`: ascending upper bounds; +Inf is implicit.
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  // Non-cumulative count of bucket i (i == bounds().size() is +Inf).
  uint64_t BucketCount(size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  uint64_t Count() const { return count_.load(std::memory_order_relaxed); }
  double Sum() const { return sum_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

// Buckets for latencies in seconds: 100 us .. ~30 s.
std::vector<double> LatencyBuckets();
std::vector<double> ExponentialBuckets(double start, double factor, int count);

enum class Type { kCounter, kGauge, kHistogram };

// All children of one metric name, keyed by label values.
template <typename T>
class Family {
 public:
  // Returns the child for `values` (one per label name, in order), creating it
  // on first use. The pointer stays valid for the registry's lifetime.
  T* WithLabels(const std::vector<std::string>& values);
  T* Get() { return WithLabels({}); }  // for a family without labels
  // Drops the child for `values` (no-op when absent), so it is no longer
  // exported. Pointers WithLabels returned for it become invalid: the caller
  // must hold none (e.g. series of a finished job).
  void Remove(const std::vector<std::string>& values);

 private:
  friend class Registry;
  Family(std::string name, std::string help, std::vector<std::string> labels,
         std::vector<double> bounds)
      : name_(std::move(name)),
        help_(std::move(help)),
        labels_(std::move(labels)),
        bounds_(std::move(bounds)) {}
  std::string name_, help_;
  std::vector<std::string> labels_;
  std::vector<double> bounds_;  // histograms only
  std::mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_;
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Names must match [a-zA-Z_:][a-zA-Z0-9_:]* and be unique; label names
  // [a-zA-Z_][a-zA-Z0-9_]* (an invalid name is a programming error: abort).
  Family<Counter>& AddCounter(const std::string& name, const std::string& help,
                              const std::vector<std::string>& labels = {});
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help,
                          const std::vector<std::string>& labels = {});
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& labels,
                                  std::vector<double> bounds = LatencyBuckets());
  // Runs before every Render(): refreshes gauges computed from other state
  // (e.g. jobs by state).
  void AddCollectHook(std::function<void()> hook);

  // Text exposition format 0.0.4, families in registration order, children
  // sorted by label values.
  std::string Render();

  static constexpr const char* kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  struct Entry {
    Type type;
    std::unique_ptr<Family<Counter>> counter;
    std::unique_ptr<Family<Gauge>> gauge;
    std::unique_ptr<Family<Histogram>> histogram;
  };
  void CheckNew(const std::string& name, const std::vector<std::string>& labels);
  std::mutex mu_;
  std::vector<Entry> entries_;
  std::vector<std::function<void()>> hooks_;
};

// Exposition-format helpers (exposed for tests).
std::string EscapeLabelValue(const std::string& v);  // \\, \", \n
std::string EscapeHelp(const std::string& v);        // \\, \n
std::string FormatValue(double v);                   // +Inf, -Inf, NaN, shortest round-trip

}  // namespace llmt::metrics
