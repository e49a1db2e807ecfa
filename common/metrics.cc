#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "common/log.h"

namespace llmt::metrics {
namespace {

bool ValidName(const std::string& n, bool allow_colon) {
  if (n.empty()) return false;
  for (size_t i = 0; i < n.size(); ++i) {
    char c = n[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

[[noreturn]] void Die(const std::string& msg) {
  LLMT_LOG(Error) << "metrics: " << msg;
  std::abort();
}

void AppendLabels(std::string* out, const std::vector<std::string>& names,
                  const std::vector<std::string>& values, const char* extra_name = nullptr,
                  const std::string& extra_value = "") {
  if (names.empty() && extra_name == nullptr) return;
  out->push_back('{');
  bool first = true;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!first) out->push_back(',');
    first = false;
    out->append(names[i]).append("=\"").append(EscapeLabelValue(values[i])).append("\"");
  }
  if (extra_name != nullptr) {
    if (!first) out->push_back(',');
    out->append(extra_name).append("=\"").append(EscapeLabelValue(extra_value)).append("\"");
  }
  out->push_back('}');
}

void AppendHeader(std::string* out, const std::string& name, const std::string& help,
                  const char* type) {
  out->append("# HELP ").append(name).append(" ").append(EscapeHelp(help)).append("\n");
  out->append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

}  // namespace

void Counter::Inc(double v) {
  if (v < 0 || std::isnan(v)) return;  // counters only go up
  value_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  std::sort(bounds_.begin(), bounds_.end());
  bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
  if (!bounds_.empty() && std::isinf(bounds_.back())) bounds_.pop_back();
  counts_.reset(new std::atomic<uint64_t>[bounds_.size() + 1]);
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0);
}

void Histogram::Observe(double v) {
  // First bucket whose upper bound is >= v ("le" semantics).
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> b;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

std::vector<double> LatencyBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10, 30};
}

template <typename T>
T* Family<T>::WithLabels(const std::vector<std::string>& values) {
  if (values.size() != labels_.size()) {
    Die(name_ + ": expected " + std::to_string(labels_.size()) + " label values, got " +
        std::to_string(values.size()));
  }
  std::lock_guard<std::mutex> l(mu_);
  auto it = children_.find(values);
  if (it != children_.end()) return it->second.get();
  std::unique_ptr<T> child;
  if constexpr (std::is_same_v<T, Histogram>) {
    child = std::make_unique<Histogram>(bounds_);
  } else {
    child = std::make_unique<T>();
  }
  T* p = child.get();
  children_.emplace(values, std::move(child));
  return p;
}

template <typename T>
void Family<T>::Remove(const std::vector<std::string>& values) {
  std::lock_guard<std::mutex> l(mu_);
  children_.erase(values);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

void Registry::CheckNew(const std::string& name, const std::vector<std::string>& labels) {
  if (!ValidName(name, true)) Die("invalid metric name '" + name + "'");
  std::set<std::string> seen;
  for (const auto& l : labels) {
    if (!ValidName(l, false) || l.rfind("__", 0) == 0 || l == "le") {
      Die(name + ": invalid label name '" + l + "'");
    }
    if (!seen.insert(l).second) Die(name + ": duplicate label '" + l + "'");
  }
  for (const Entry& e : entries_) {
    const std::string& n = e.counter    ? e.counter->name_
                           : e.gauge    ? e.gauge->name_
                                        : e.histogram->name_;
    if (n == name) Die("metric '" + name + "' registered twice");
  }
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help,
                                      const std::vector<std::string>& labels) {
  std::lock_guard<std::mutex> l(mu_);
  CheckNew(name, labels);
  Entry e{Type::kCounter, nullptr, nullptr, nullptr};
  e.counter.reset(new Family<Counter>(name, help, labels, {}));
  entries_.push_back(std::move(e));
  return *entries_.back().counter;
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& labels) {
  std::lock_guard<std::mutex> l(mu_);
  CheckNew(name, labels);
  Entry e{Type::kGauge, nullptr, nullptr, nullptr};
  e.gauge.reset(new Family<Gauge>(name, help, labels, {}));
  entries_.push_back(std::move(e));
  return *entries_.back().gauge;
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          const std::vector<std::string>& labels,
                                          std::vector<double> bounds) {
  std::lock_guard<std::mutex> l(mu_);
  CheckNew(name, labels);
  Entry e{Type::kHistogram, nullptr, nullptr, nullptr};
  e.histogram.reset(new Family<Histogram>(name, help, labels, std::move(bounds)));
  entries_.push_back(std::move(e));
  return *entries_.back().histogram;
}

void Registry::AddCollectHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> l(mu_);
  hooks_.push_back(std::move(hook));
}

std::string Registry::Render() {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> l(mu_);
    hooks = hooks_;
  }
  for (auto& h : hooks) h();  // outside mu_: hooks may create children

  std::lock_guard<std::mutex> l(mu_);
  std::string out;
  for (Entry& e : entries_) {
    if (e.type == Type::kCounter) {
      auto& f = *e.counter;
      AppendHeader(&out, f.name_, f.help_, "counter");
      std::lock_guard<std::mutex> fl(f.mu_);
      for (auto& [values, c] : f.children_) {
        out.append(f.name_);
        AppendLabels(&out, f.labels_, values);
        out.append(" ").append(FormatValue(c->Value())).append("\n");
      }
    } else if (e.type == Type::kGauge) {
      auto& f = *e.gauge;
      AppendHeader(&out, f.name_, f.help_, "gauge");
      std::lock_guard<std::mutex> fl(f.mu_);
      for (auto& [values, g] : f.children_) {
        out.append(f.name_);
        AppendLabels(&out, f.labels_, values);
        out.append(" ").append(FormatValue(g->Value())).append("\n");
      }
    } else {
      auto& f = *e.histogram;
      AppendHeader(&out, f.name_, f.help_, "histogram");
      std::lock_guard<std::mutex> fl(f.mu_);
      for (auto& [values, h] : f.children_) {
        // _count is the bucket total rather than count_: observations racing
        // with this render could otherwise make +Inf differ from _count,
        // which the exposition format forbids.
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= h->bounds().size(); ++i) {
          cumulative += h->BucketCount(i);
          std::string le = i < h->bounds().size() ? FormatValue(h->bounds()[i]) : "+Inf";
          out.append(f.name_).append("_bucket");
          AppendLabels(&out, f.labels_, values, "le", le);
          out.append(" ").append(std::to_string(cumulative)).append("\n");
        }
        out.append(f.name_).append("_sum");
        AppendLabels(&out, f.labels_, values);
        out.append(" ").append(FormatValue(h->Sum())).append("\n");
        out.append(f.name_).append("_count");
        AppendLabels(&out, f.labels_, values);
        out.append(" ").append(std::to_string(cumulative)).append("\n");
      }
    }
  }
  return out;
}

std::string EscapeLabelValue(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string EscapeHelp(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  char buf[32];
  for (int prec = 6; prec <= 17; ++prec) {  // shortest text that round-trips
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace llmt::metrics
