#include "common/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <thread>

#include "common/metrics_http.h"
#include "gtest/gtest.h"

namespace llmt::metrics {
namespace {

TEST(MetricsTest, CounterAndGaugeExposition) {
  Registry reg;
  auto& rpcs = reg.AddCounter("llmt_rpcs_total", "RPCs handled.", {"method", "code"});
  rpcs.WithLabels({"CreateJob", "OK"})->Inc();
  rpcs.WithLabels({"CreateJob", "OK"})->Inc(2);
  rpcs.WithLabels({"GetJob", "NOT_FOUND"})->Inc();
  rpcs.WithLabels({"GetJob", "NOT_FOUND"})->Inc(-5);  // ignored: counters only go up
  auto& depth = reg.AddGauge("llmt_queue_depth", "Pending jobs.");
  depth.Get()->Set(7);
  depth.Get()->Dec(2.5);
  EXPECT_EQ(reg.Render(),
            "# HELP llmt_rpcs_total RPCs handled.\n"
            "# TYPE llmt_rpcs_total counter\n"
            "llmt_rpcs_total{method=\"CreateJob\",code=\"OK\"} 3\n"
            "llmt_rpcs_total{method=\"GetJob\",code=\"NOT_FOUND\"} 1\n"
            "# HELP llmt_queue_depth Pending jobs.\n"
            "# TYPE llmt_queue_depth gauge\n"
            "llmt_queue_depth 4.5\n");
}

TEST(MetricsTest, RemoveDropsOneChildOnly) {
  Registry reg;
  auto& loss = reg.AddGauge("llmt_train_loss", "Loss.", {"job", "rank"});
  loss.WithLabels({"jobs/1", "0"})->Set(2.5);
  loss.WithLabels({"jobs/2", "0"})->Set(3);
  auto& steps = reg.AddHistogram("llmt_step_seconds", "Step time.", {"job"}, {1});
  steps.WithLabels({"jobs/1"})->Observe(0.5);
  loss.Remove({"jobs/1", "0"});
  steps.Remove({"jobs/1"});
  loss.Remove({"jobs/9", "0"});  // absent: no-op
  const std::string out = reg.Render();
  EXPECT_EQ(out.find("jobs/1"), std::string::npos) << out;
  EXPECT_NE(out.find("llmt_train_loss{job=\"jobs/2\",rank=\"0\"} 3"), std::string::npos) << out;
  // The family itself stays, and a removed child can come back fresh.
  loss.WithLabels({"jobs/1", "0"})->Set(1);
  EXPECT_NE(reg.Render().find("llmt_train_loss{job=\"jobs/1\",rank=\"0\"} 1"), std::string::npos);
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Registry reg;
  auto& lat = reg.AddHistogram("llmt_latency_seconds", "Latency.", {"m"}, {0.1, 1, 10});
  Histogram* h = lat.WithLabels({"a"});
  for (double v : {0.05, 0.1, 0.5, 2.0, 100.0}) h->Observe(v);
  EXPECT_EQ(h->Count(), 5u);
  EXPECT_DOUBLE_EQ(h->Sum(), 102.65);
  EXPECT_EQ(reg.Render(),
            "# HELP llmt_latency_seconds Latency.\n"
            "# TYPE llmt_latency_seconds histogram\n"
            "llmt_latency_seconds_bucket{m=\"a\",le=\"0.1\"} 2\n"
            "llmt_latency_seconds_bucket{m=\"a\",le=\"1\"} 3\n"
            "llmt_latency_seconds_bucket{m=\"a\",le=\"10\"} 4\n"
            "llmt_latency_seconds_bucket{m=\"a\",le=\"+Inf\"} 5\n"
            "llmt_latency_seconds_sum{m=\"a\"} 102.65\n"
            "llmt_latency_seconds_count{m=\"a\"} 5\n");
}

TEST(MetricsTest, EscapingAndValueFormat) {
  EXPECT_EQ(EscapeLabelValue("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(EscapeHelp("x\\y\nz\"q"), "x\\\\y\\nz\"q");
  EXPECT_EQ(FormatValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatValue(std::nan("")), "NaN");
  EXPECT_EQ(FormatValue(42), "42");
  EXPECT_EQ(FormatValue(0.1), "0.1");
  EXPECT_EQ(std::strtod(FormatValue(1.0 / 3).c_str(), nullptr), 1.0 / 3);
  Registry reg;
  reg.AddGauge("g", "Help with \\ and\nnewline.", {"l"}).WithLabels({"q\"v"})->Set(1);
  EXPECT_EQ(reg.Render(),
            "# HELP g Help with \\\\ and\\nnewline.\n# TYPE g gauge\ng{l=\"q\\\"v\"} 1\n");
}

TEST(MetricsTest, CollectHookRefreshesGauges) {
  Registry reg;
  auto& jobs = reg.AddGauge("llmt_jobs", "Jobs by state.", {"state"});
  int calls = 0;
  reg.AddCollectHook([&] {
    ++calls;
    jobs.WithLabels({"PENDING"})->Set(calls * 10);
  });
  EXPECT_NE(reg.Render().find("llmt_jobs{state=\"PENDING\"} 10\n"), std::string::npos);
  EXPECT_NE(reg.Render().find("llmt_jobs{state=\"PENDING\"} 20\n"), std::string::npos);
}

TEST(MetricsTest, ConcurrentUpdatesAreNotLost) {
  Registry reg;
  auto& c = reg.AddCounter("c_total", "c", {"t"});
  auto& h = reg.AddHistogram("h_seconds", "h", {}, {1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.WithLabels({"x"})->Inc();
        h.Get()->Observe(i % 2 ? 0.5 : 2);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(c.WithLabels({"x"})->Value(), 40000);
  EXPECT_EQ(h.Get()->Count(), 40000u);
  EXPECT_EQ(h.Get()->BucketCount(0), 20000u);
  EXPECT_EQ(h.Get()->BucketCount(1), 20000u);
}

TEST(MetricsDeathTest, InvalidOrDuplicateNamesAbort) {
  EXPECT_DEATH({ Registry r; r.AddCounter("bad-name", "x"); }, "invalid metric name");
  EXPECT_DEATH({ Registry r; r.AddCounter("ok", "x", {"le"}); }, "invalid label name");
  EXPECT_DEATH(
      {
        Registry r;
        r.AddCounter("dup", "x");
        r.AddGauge("dup", "y");
      },
      "registered twice");
  EXPECT_DEATH({ Registry r; r.AddCounter("c", "x", {"a"}).WithLabels({}); }, "label values");
}

// GET over a plain socket; returns the whole response (headers + body).
std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  close(fd);
  return out;
}

TEST(MetricsHttpTest, ServesMetricsAndHandlers) {
  Registry reg;
  reg.AddCounter("llmt_test_total", "t").Get()->Inc(5);
  bool ready = false;
  auto server = HttpServer::Start(
      "127.0.0.1:0", &reg,
      {{"/readyz", [&] { return ready ? HttpResponse{200, "text/plain", "ready\n"}
                                      : HttpResponse{503, "text/plain", "recovering\n"}; }}});
  ASSERT_TRUE(server.ok()) << server.status();
  int port = (*server)->port();
  ASSERT_GT(port, 0);
  std::string m = HttpGet(port, "/metrics");
  EXPECT_NE(m.find("HTTP/1.1 200"), std::string::npos) << m;
  EXPECT_NE(m.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << m;
  EXPECT_NE(m.find("llmt_test_total 5\n"), std::string::npos) << m;
  EXPECT_NE(HttpGet(port, "/readyz").find("HTTP/1.1 503"), std::string::npos);
  ready = true;
  EXPECT_NE(HttpGet(port, "/readyz").find("HTTP/1.1 200"), std::string::npos);
  EXPECT_NE(HttpGet(port, "/nothing").find("404"), std::string::npos);
}

TEST(MetricsHttpTest, PortInUseIsAnError) {
  auto a = HttpServer::Start("127.0.0.1:0", nullptr);
  ASSERT_TRUE(a.ok());
  auto b = HttpServer::Start("127.0.0.1:" + std::to_string((*a)->port()), nullptr);
  EXPECT_FALSE(b.ok());
}

}  // namespace
}  // namespace llmt::metrics
