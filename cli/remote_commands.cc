#include "cli/remote_commands.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/args.h"
#include "common/fs.h"
#include "common/spec.h"
#include "google/protobuf/util/json_util.h"
#include "llmt/v1/coordinator.grpc.pb.h"
#include "worker/daemon/rpc_client.h"

namespace llmt::cli {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;
constexpr int kExitAuth = 4;
constexpr int kExitNotFound = 5;
constexpr int kExitRefused = 6;
constexpr int kExitJobFailed = 10;
constexpr int kExitJobCancelled = 11;

const std::vector<std::string> kConnFlags = {"coordinator", "token-file",      "tls-ca", "tls-cert",
                                             "tls-key",     "tls-server-name", "timeout"};

std::string OneLine(absl::string_view s) {
  std::string out = absl::StrReplaceAll(absl::StripTrailingAsciiWhitespace(s), {{"\n", "; "}});
  return out;
}

int Fail(const std::string& msg, int code) {
  std::fprintf(stderr, "llmt: error: %s\n", OneLine(msg).c_str());
  return code;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? "" : v;
}

std::string Trim(double v, int prec) { return absl::StrFormat("%.*f", prec, v); }

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrCat(s / 60, "m", absl::StrFormat("%02d", s % 60), "s");
  return absl::StrCat(s / 3600, "h", absl::StrFormat("%02d", (s % 3600) / 60), "m");
}

std::string FormatTime(int64_t us) {
  if (us <= 0) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S", absl::FromUnixMicros(us), absl::LocalTimeZone());
}

std::string FormatAge(int64_t us) {
  if (us <= 0) return "-";
  return FormatDuration(absl::ToDoubleSeconds(absl::Now() - absl::FromUnixMicros(us))) + " ago";
}

std::string FormatBytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

std::string FormatRate(double tokens_per_s) {
  if (tokens_per_s >= 1e6) return absl::StrFormat("%.2fM tok/s", tokens_per_s / 1e6);
  if (tokens_per_s >= 1e3) return absl::StrFormat("%.1fk tok/s", tokens_per_s / 1e3);
  return absl::StrFormat("%.0f tok/s", tokens_per_s);
}

// "JOB_STATE_RUNNING" -> "RUNNING".
std::string StripEnumPrefix(const std::string& name, absl::string_view prefix) {
  absl::string_view v = name;
  absl::ConsumePrefix(&v, prefix);
  return std::string(v);
}

std::string StateName(v1::JobState s) {
  return StripEnumPrefix(v1::JobState_Name(s), "JOB_STATE_");
}

std::string AttemptStateName(v1::AttemptState s) {
  return StripEnumPrefix(v1::AttemptState_Name(s), "ATTEMPT_STATE_");
}

std::string JobNameOf(const std::string& arg) {
  return absl::StartsWith(arg, "jobs/") ? arg : absl::StrCat("jobs/", arg);
}

std::string UriPath(const std::string& uri) {
  absl::string_view v = uri;
  absl::ConsumePrefix(&v, "file://");
  return std::string(v);
}

double Metric(const google::protobuf::Map<std::string, double>& m, const char* key,
              double def = 0) {
  auto it = m.find(key);
  return it == m.end() ? def : it->second;
}

// ---------------------------------------------------------------- client

class Client {
 public:
  static absl::StatusOr<Client> Connect(const Args& args) {
    Client c;
    rpc::ClientOptions& o = c.options_;
    o.address = args.Get("coordinator", Env("LLMT_COORDINATOR"));
    if (o.address.empty()) o.address = "127.0.0.1:7070";
    if (args.Has("token-file")) {
      auto t = rpc::ReadTokenFile(args.Get("token-file"));
      if (!t.ok()) return absl::InvalidArgumentError(std::string(t.status().message()));
      o.token = *t;
    } else if (!Env("LLMT_TOKEN").empty()) {
      o.token = Env("LLMT_TOKEN");
    } else if (!Env("LLMT_TOKEN_FILE").empty()) {
      auto t = rpc::ReadTokenFile(Env("LLMT_TOKEN_FILE"));
      if (!t.ok()) return absl::InvalidArgumentError(std::string(t.status().message()));
      o.token = *t;
    }
    o.tls = args.Has("tls") || args.Has("tls-ca");
    o.tls_ca = args.Get("tls-ca");
    o.tls_cert = args.Get("tls-cert");
    o.tls_key = args.Get("tls-key");
    o.tls_server_name = args.Get("tls-server-name");
    auto timeout = args.GetDouble("timeout", 10);
    if (!timeout.ok()) return timeout.status();
    if (*timeout <= 0) return absl::InvalidArgumentError("--timeout: must be > 0 seconds");
    c.timeout_ = absl::Seconds(*timeout);
    auto ch = rpc::MakeChannel(o);
    if (!ch.ok()) return absl::InvalidArgumentError(std::string(ch.status().message()));
    c.channel_ = *ch;
    c.stub_ = v1::JobService::NewStub(c.channel_);
    return c;
  }

  // Wraps one unary call: deadline, token, status mapping.
  template <typename Req, typename Resp, typename Method>
  absl::Status Call(Method method, const Req& req, Resp* resp) {
    grpc::ClientContext ctx;
    rpc::PrepareContext(&ctx, options_.token, timeout_);
    return rpc::FromGrpc(((*stub_).*method)(&ctx, req, resp));
  }

  // The exit code and one-line message for a failed call.
  int Fail(const absl::Status& s, const std::string& what) const {
    switch (s.code()) {
      case absl::StatusCode::kUnavailable:
      case absl::StatusCode::kDeadlineExceeded:
        return cli::Fail(
            absl::StrCat("cannot reach the coordinator at ", options_.address, " (", s.message(),
                         "); is llmt-coordinator running? (--coordinator "
                         "or LLMT_COORDINATOR)"),
            kExitUnreachable);
      case absl::StatusCode::kUnauthenticated:
      case absl::StatusCode::kPermissionDenied:
        return cli::Fail(absl::StrCat("authentication failed at ", options_.address, ": ",
                                      s.message(), " (set LLMT_TOKEN or --token-file)"),
                         kExitAuth);
      case absl::StatusCode::kInvalidArgument:
        return cli::Fail(absl::StrCat(what, " rejected: ", s.message()), kExitUsage);
      case absl::StatusCode::kNotFound:
        return cli::Fail(std::string(s.message()), kExitNotFound);
      case absl::StatusCode::kResourceExhausted:
      case absl::StatusCode::kAlreadyExists:
      case absl::StatusCode::kFailedPrecondition:
        return cli::Fail(absl::StrCat(what, " refused: ", s.message()), kExitRefused);
      default:
        return cli::Fail(absl::StrCat(what, ": ", s.ToString()), kExitFailure);
    }
  }

  v1::JobService::Stub* stub() { return stub_.get(); }
  const rpc::ClientOptions& options() const { return options_; }

 private:
  rpc::ClientOptions options_;
  absl::Duration timeout_ = absl::Seconds(10);
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};

// Parses the command's flags plus the connection flags; "-f" means --follow.
absl::StatusOr<Args> ParseArgs(int argc, char** argv, std::vector<std::string> value_flags,
                               std::vector<std::string> bool_flags) {
  std::vector<std::string> storage;
  for (int i = 0; i < argc; ++i)
    storage.push_back(std::strcmp(argv[i], "-f") == 0 ? "--follow" : argv[i]);
  std::vector<char*> ptrs;
  for (auto& s : storage) ptrs.push_back(s.data());
  value_flags.insert(value_flags.end(), kConnFlags.begin(), kConnFlags.end());
  bool_flags.push_back("tls");
  return Args::Parse(static_cast<int>(ptrs.size()), ptrs.data(), 2, value_flags, bool_flags);
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) return true;
  }
  return false;
}

constexpr char kConnHelp[] =
    "\nconnection: --coordinator HOST:PORT (or $LLMT_COORDINATOR; default 127.0.0.1:7070),\n"
    "  --token-file FILE (or $LLMT_TOKEN, $LLMT_TOKEN_FILE), --tls, --tls-ca FILE,\n"
    "  --tls-cert FILE, --tls-key FILE, --tls-server-name NAME, --timeout SECONDS (default 10)\n"
    "exit codes: 0 ok, 1 failure, 2 usage/rejected spec, 3 coordinator unreachable,\n"
    "  4 authentication, 5 not found, 6 refused";

int Usage(const char* text) {
  std::printf("%s%s\n", text, kConnHelp);
  return kExitOk;
}

// One positional JOB argument.
absl::StatusOr<std::string> OneJob(const Args& args, const char* cmd) {
  if (args.positional().size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(cmd, " needs exactly one JOB (e.g. jobs/3 or 3)"));
  }
  return JobNameOf(args.positional()[0]);
}

// What every single-job command starts with: its flags, exactly one JOB and a
// client for the coordinator. Any failure here is a usage error.
struct JobCommand {
  Args args;
  std::string job;
  Client client;
};
absl::StatusOr<JobCommand> StartJobCommand(int argc, char** argv,
                                           std::vector<std::string> value_flags,
                                           std::vector<std::string> bool_flags, const char* cmd) {
  auto args = ParseArgs(argc, argv, std::move(value_flags), std::move(bool_flags));
  if (!args.ok()) return args.status();
  auto job = OneJob(*args, cmd);
  if (!job.ok()) return job.status();
  auto client = Client::Connect(*args);
  if (!client.ok()) return client.status();
  return JobCommand{std::move(*args), std::move(*job), std::move(*client)};
}

std::string ProgressSummary(const v1::Job& j) {
  if (!j.has_progress() || j.progress().step() == 0) return "";
  const auto& m = j.progress().metrics();
  int64_t max = j.spec().train().max_steps();
  std::string s = absl::StrCat("step ", j.progress().step(), "/", max);
  if (m.count("loss")) absl::StrAppend(&s, "  loss ", Trim(Metric(m, "loss"), 4));
  if (m.count("val_loss")) absl::StrAppend(&s, "  val ", Trim(Metric(m, "val_loss"), 4));
  if (m.count("tokens_per_s")) absl::StrAppend(&s, "  ", FormatRate(Metric(m, "tokens_per_s")));
  return s;
}

// ---------------------------------------------------------------- submit

std::string RandomRequestId() {
  std::random_device rd;
  std::mt19937_64 g((static_cast<uint64_t>(rd()) << 32) ^ rd() ^
                    static_cast<uint64_t>(absl::GetCurrentTimeNanos()));
  return absl::StrFormat("%016x%016x", g(), g());
}

int Submit(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt submit SPEC.yaml [--set path=value ...] [--name NAME] [--priority N]\n"
        "                   [--label key=value ...] [--request-id ID] [--force-queue]\n\n"
        "Submits a training job to the coordinator and prints its name (jobs/N). The spec is\n"
        "validated by the coordinator (errors name the field). Paths in the spec (data.dir,\n"
        "output_dir) are read on the workers. --request-id makes a retried submit idempotent\n"
        "(default: a fresh random id, reused for this command's own retries).");
  }
  auto args =
      ParseArgs(argc, argv, {"set", "name", "priority", "label", "request-id"}, {"force-queue"});
  if (!args.ok()) return Fail(std::string(args.status().message()), kExitUsage);
  if (args->positional().size() != 1) {
    return Fail("submit needs exactly one SPEC.yaml (see --help)", kExitUsage);
  }
  const std::string path = args->positional()[0];
  auto text = fs::ReadFile(path);
  if (!text.ok()) return Fail(std::string(text.status().message()), kExitUsage);
  // Conversion only: semantic validation is the coordinator's, so its
  // field-level message is what the user sees.
  auto spec = spec::ParseYamlRaw(*text, path, args->GetAll("set"));
  if (!spec.ok()) return Fail(std::string(spec.status().message()), kExitUsage);
  if (args->Has("name")) spec->set_name(args->Get("name"));
  if (spec->name().empty()) {
    std::string base = fs::Basename(path);
    if (auto dot = base.rfind('.'); dot != std::string::npos) base.resize(dot);
    spec->set_name(base);
  }
  auto prio = args->GetInt("priority", spec->priority());
  if (!prio.ok()) return Fail(std::string(prio.status().message()), kExitUsage);
  spec->set_priority(static_cast<int>(*prio));
  for (const std::string& kv : args->GetAll("label")) {
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() != 2 || p[0].empty()) {
      return Fail(absl::StrCat("--label: '", kv, "' is not key=value"), kExitUsage);
    }
    (*spec->mutable_labels())[p[0]] = p[1];
  }
  if (args->Has("force-queue")) spec->set_force_queue(true);

  auto client = Client::Connect(*args);
  if (!client.ok()) return Fail(std::string(client.status().message()), kExitUsage);
  v1::CreateJobRequest req;
  *req.mutable_spec() = *spec;
  req.set_request_id(args->Get("request-id", RandomRequestId()));
  v1::Job job;
  absl::Status s;
  // The request id makes retries safe: a lost reply does not create a second job.
  for (int attempt = 0; attempt < 3; ++attempt) {
    s = client->Call(&v1::JobService::Stub::CreateJob, req, &job);
    if (s.ok() || !absl::IsUnavailable(s)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(300 << attempt));
  }
  if (!s.ok()) return client->Fail(s, "spec");
  std::printf("%s\n", job.name().c_str());
  return kExitOk;
}

// ---------------------------------------------------------------- get

int Get(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt get JOB [--json]\n\n"
        "Shows a job: state and why, progress, attempts (each with its outcome), the latest\n"
        "checkpoint and where output goes. --json prints the Job record.");
  }
  auto started = StartJobCommand(argc, argv, {}, {"json"}, "get");
  if (!started.ok()) return Fail(std::string(started.status().message()), kExitUsage);
  const Args& args = started->args;
  const std::string& name = started->job;
  Client& client = started->client;
  v1::GetJobRequest req;
  req.set_name(name);
  v1::Job j;
  if (absl::Status s = client.Call(&v1::JobService::Stub::GetJob, req, &j); !s.ok()) {
    return client.Fail(s, "get");
  }
  if (args.Has("json")) {
    std::string out;
    google::protobuf::util::JsonPrintOptions po;
    po.add_whitespace = true;
    po.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(j, &out, po);
    std::printf("%s", out.c_str());
    return kExitOk;
  }
  v1::ListAttemptsRequest areq;
  areq.set_name(j.name());
  v1::ListAttemptsResponse attempts;
  if (absl::Status s = client.Call(&v1::JobService::Stub::ListAttempts, areq, &attempts);
      !s.ok()) {
    return client.Fail(s, "get");
  }
  std::printf("%s  %s\n", j.name().c_str(), j.spec().name().c_str());
  std::printf("  state:       %s%s\n", StateName(j.state()).c_str(),
              j.state_reason().empty() ? "" : absl::StrCat(" (", j.state_reason(), ")").c_str());
  std::string progress = ProgressSummary(j);
  if (!progress.empty()) std::printf("  progress:    %s\n", progress.c_str());
  std::printf(
      "  resources:   %d rank(s), %s\n", std::max(1, j.spec().resources().ranks()),
      j.spec().resources().gpus_per_rank() > 0
          ? absl::StrCat(j.spec().resources().gpus_per_rank(), " GPU(s) per rank").c_str()
          : absl::StrCat(std::max(1, j.spec().resources().cpus_per_rank()), " CPU core(s) per rank")
                .c_str());
  std::printf("  priority:    %d   restarts: %d/%d   preemptions: %d\n", j.spec().priority(),
              j.restarts(), j.spec().max_restarts(), j.preemptions());
  if (j.has_latest_checkpoint()) {
    const auto& c = j.latest_checkpoint();
    std::printf(
        "  checkpoint:  step %lld  %s%s\n", static_cast<long long>(c.step()),
        UriPath(c.uri()).c_str(),
        c.metrics().count("val_loss")
            ? absl::StrCat("  (val loss ", Trim(Metric(c.metrics(), "val_loss"), 4), ")").c_str()
            : "");
  }
  std::printf("  output_dir:  %s\n", j.spec().output_dir().c_str());
  std::printf("  created:     %s   started: %s   ended: %s\n",
              FormatTime(j.create_time_us()).c_str(), FormatTime(j.start_time_us()).c_str(),
              FormatTime(j.end_time_us()).c_str());
  if (attempts.attempts_size() > 0) {
    std::printf("  attempts:\n");
    for (const auto& a : attempts.attempts()) {
      std::vector<std::string> where;
      for (const auto& r : a.ranks()) where.push_back(absl::StrCat(r.rank(), "@", r.worker_id()));
      std::printf("    #%d  attempt %llu  %-9s ranks %s%s%s\n", a.ordinal(),
                  static_cast<unsigned long long>(a.attempt_id()),
                  AttemptStateName(a.state()).c_str(), absl::StrJoin(where, ",").c_str(),
                  a.resume_step() > 0 ? absl::StrCat("  from step ", a.resume_step()).c_str() : "",
                  a.reason().empty() ? "" : absl::StrCat("  (", a.reason(), ")").c_str());
    }
  }
  return kExitOk;
}

// ---------------------------------------------------------------- list

int List(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt list [--state STATE] [--filter EXPR]\n\n"
        "Lists jobs in submit order. --state PENDING|RUNNING|SUCCEEDED|FAILED|CANCELLED;\n"
        "--filter takes the API's filter (e.g. 'labels.team=nlp AND state=RUNNING').");
  }
  auto args = ParseArgs(argc, argv, {"state", "filter"}, {});
  if (!args.ok()) return Fail(std::string(args.status().message()), kExitUsage);
  auto client = Client::Connect(*args);
  if (!client.ok()) return Fail(std::string(client.status().message()), kExitUsage);
  std::vector<std::string> terms;
  if (args->Has("state")) terms.push_back("state=" + absl::AsciiStrToUpper(args->Get("state")));
  if (args->Has("filter")) terms.push_back(args->Get("filter"));
  v1::ListJobsRequest req;
  req.set_filter(absl::StrJoin(terms, " AND "));
  req.set_page_size(500);
  bool header = false;
  while (true) {
    v1::ListJobsResponse resp;
    if (absl::Status s = client->Call(&v1::JobService::Stub::ListJobs, req, &resp); !s.ok()) {
      return client->Fail(s, "list");
    }
    if (!header) {
      std::printf("%-10s %-20s %-10s %-16s %-4s %s\n", "JOB", "NAME", "STATE", "STEP", "PRIO",
                  "CREATED");
      header = true;
    }
    for (const auto& j : resp.jobs()) {
      std::string step = j.progress().step() > 0
                             ? absl::StrCat(j.progress().step(), "/", j.spec().train().max_steps())
                             : "-";
      std::printf("%-10s %-20s %-10s %-16s %-4d %s\n", j.name().c_str(),
                  j.spec().name().substr(0, 20).c_str(), StateName(j.state()).c_str(), step.c_str(),
                  j.spec().priority(), FormatAge(j.create_time_us()).c_str());
    }
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  return kExitOk;
}

// ---------------------------------------------------------------- watch

// Renders progress: a redrawn bar on a terminal, plain lines otherwise.
class ProgressView {
 public:
  ProgressView(bool tty, int64_t max_steps) : tty_(tty), max_steps_(max_steps) {}

  void Point(const v1::Progress& p) {
    const auto& m = p.metrics();
    step_ = p.step();
    if (m.count("max_steps") && Metric(m, "max_steps") > 0) {
      max_steps_ = static_cast<int64_t>(Metric(m, "max_steps"));
    }
    loss_ = Metric(m, "loss", loss_);
    if (m.count("val_loss")) val_ = Metric(m, "val_loss");
    tps_ = Metric(m, "tokens_per_s", tps_);
    step_ms_ = Metric(m, "step_ms", step_ms_);
    // ETA from the observed rate (it includes evaluation and checkpoints),
    // reset when a new attempt starts.
    if (first_time_us_ == 0 || p.attempt_id() != attempt_ || p.step() < first_step_) {
      first_time_us_ = p.time_us();
      first_step_ = p.step();
      attempt_ = p.attempt_id();
    }
    Render(/*final_line=*/!tty_);
  }

  // A line of its own above the bar.
  void Line(const std::string& text) {
    if (tty_ && bar_shown_) std::fputs("\r\033[K", stdout);
    std::printf("%s\n", text.c_str());
    if (tty_ && bar_shown_) Render(false);
    std::fflush(stdout);
  }

  void Finish() {
    if (tty_ && bar_shown_) std::fputs("\n", stdout);
    bar_shown_ = false;
    std::fflush(stdout);
  }

  double val_loss() const { return val_; }

 private:
  double EtaSeconds(int64_t now_us) const {
    if (max_steps_ <= 0 || step_ >= max_steps_) return 0;
    double per_step = 0;
    if (step_ > first_step_ && now_us > first_time_us_) {
      per_step = (now_us - first_time_us_) / 1e6 / static_cast<double>(step_ - first_step_);
    } else if (step_ms_ > 0) {
      per_step = step_ms_ / 1e3;
    }
    return per_step > 0 ? per_step * static_cast<double>(max_steps_ - step_) : -1;
  }

  void Render(bool final_line) {
    const int64_t now_us = absl::ToUnixMicros(absl::Now());
    std::string stats = absl::StrCat("step ", step_, "/", max_steps_, "  loss ", Trim(loss_, 4));
    if (val_ > 0) absl::StrAppend(&stats, "  val ", Trim(val_, 4));
    if (tps_ > 0) absl::StrAppend(&stats, "  ", FormatRate(tps_));
    absl::StrAppend(&stats, "  ETA ", FormatDuration(EtaSeconds(now_us)));
    if (!tty_) {
      std::printf("%s\n", stats.c_str());
      std::fflush(stdout);
      return;
    }
    const int width = 30;
    double frac = max_steps_ > 0 ? std::min(1.0, static_cast<double>(step_) / max_steps_) : 0;
    int filled = static_cast<int>(frac * width);
    std::string bar = absl::StrCat("[", std::string(filled, '#'), std::string(width - filled, '.'),
                                   "] ", absl::StrFormat("%3.0f%%", frac * 100), "  ", stats);
    std::printf("\r\033[K%s", bar.c_str());
    if (final_line) std::printf("\n");
    std::fflush(stdout);
    bar_shown_ = true;
  }

  bool tty_;
  int64_t max_steps_;
  int64_t step_ = 0;
  double loss_ = 0, val_ = 0, tps_ = 0, step_ms_ = 0;
  int64_t first_time_us_ = 0, first_step_ = 0;
  uint64_t attempt_ = 0;
  bool bar_shown_ = false;
};

// Streams the job's events after `after_seq`, reconnecting after transient
// failures (a coordinator restart) for up to `reconnect_for`; `on_event`
// returns false to stop. Returns the last status (OK when the stream ended
// because the job is terminal or on_event stopped it).
absl::Status StreamEvents(Client& client, const std::string& job, int64_t after_seq,
                          absl::Duration reconnect_for,
                          const std::function<bool(const v1::Event&)>& on_event,
                          const std::function<void(const std::string&)>& note) {
  int64_t last = after_seq;
  absl::Time down_since = absl::InfinitePast();
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    grpc::ClientContext ctx;
    if (!client.options().token.empty()) {
      ctx.AddMetadata("authorization", "Bearer " + client.options().token);
    }
    v1::WatchJobRequest req;
    req.set_name(job);
    req.set_after_seq(last);
    auto reader = client.stub()->WatchJob(&ctx, req);
    v1::Event ev;
    bool stopped = false;
    while (reader->Read(&ev)) {
      down_since = absl::InfinitePast();
      backoff = absl::Milliseconds(200);
      last = ev.seq();
      if (!on_event(ev)) {
        stopped = true;
        ctx.TryCancel();
        break;
      }
    }
    absl::Status s = rpc::FromGrpc(reader->Finish());
    if (stopped || s.ok()) return absl::OkStatus();
    if (!rpc::IsTransient(s)) return s;
    absl::Time now = absl::Now();
    if (down_since == absl::InfinitePast()) {
      down_since = now;
      note(absl::StrCat("connection to the coordinator lost (", s.message(), "); reconnecting"));
    } else if (now - down_since > reconnect_for) {
      return s;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

int ExitForState(v1::JobState s) {
  switch (s) {
    case v1::JOB_STATE_SUCCEEDED:
      return kExitOk;
    case v1::JOB_STATE_CANCELLED:
      return kExitJobCancelled;
    default:
      return kExitJobFailed;
  }
}

int Watch(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt watch JOB [--lines] [--reconnect-for SECONDS]\n\n"
        "Follows a job until it ends: a live progress bar on a terminal (step/total, loss, val\n"
        "loss, tokens/s, ETA), plain lines otherwise (or with --lines), plus state changes and\n"
        "checkpoints. Survives coordinator restarts (default: reconnects for up to 300 s).\n"
        "Exit code: 0 SUCCEEDED, 10 FAILED, 11 CANCELLED (others as below).");
  }
  auto started = StartJobCommand(argc, argv, {"reconnect-for"}, {"lines"}, "watch");
  if (!started.ok()) return Fail(std::string(started.status().message()), kExitUsage);
  const Args& args = started->args;
  const std::string& name = started->job;
  Client& client = started->client;
  auto reconnect = args.GetDouble("reconnect-for", 300);
  if (!reconnect.ok()) return Fail(std::string(reconnect.status().message()), kExitUsage);
  v1::GetJobRequest greq;
  greq.set_name(name);
  v1::Job j;
  if (absl::Status s = client.Call(&v1::JobService::Stub::GetJob, greq, &j); !s.ok()) {
    return client.Fail(s, "watch");
  }
  const bool tty = isatty(STDOUT_FILENO) && !args.Has("lines");
  ProgressView view(tty, j.spec().train().max_steps());
  view.Line(absl::StrCat(j.name(), " (", j.spec().name(), "): ", StateName(j.state()),
                         j.state_reason().empty() ? "" : absl::StrCat(" - ", j.state_reason())));
  if (j.has_progress() && j.progress().step() > 0) view.Point(j.progress());
  v1::JobState final_state = j.state();
  std::string final_reason = j.state_reason();
  if (!(j.state() == v1::JOB_STATE_SUCCEEDED || j.state() == v1::JOB_STATE_FAILED ||
        j.state() == v1::JOB_STATE_CANCELLED)) {
    absl::Status s = StreamEvents(
        client, j.name(), j.last_event_seq(), absl::Seconds(*reconnect),
        [&](const v1::Event& ev) {
          if (ev.has_progress()) {
            view.Point(ev.progress().progress());
          } else if (ev.has_state_change()) {
            const auto& sc = ev.state_change();
            final_state = sc.to();
            final_reason = sc.reason();
            const bool terminal = sc.to() == v1::JOB_STATE_SUCCEEDED ||
                                  sc.to() == v1::JOB_STATE_FAILED ||
                                  sc.to() == v1::JOB_STATE_CANCELLED;
            if (!terminal) {  // the summary below says how it ended
              view.Line(absl::StrCat(StateName(sc.to()),
                                     sc.reason().empty() ? "" : absl::StrCat(": ", sc.reason())));
            }
          } else if (ev.has_checkpoint()) {
            const auto& c = ev.checkpoint();
            view.Line(absl::StrCat(
                "checkpoint step ", c.step(), " (", FormatBytes(c.bytes()),
                c.metrics().count("val_loss")
                    ? absl::StrCat(", val loss ", Trim(Metric(c.metrics(), "val_loss"), 4))
                    : "",
                ") ", UriPath(c.uri())));
          } else if (ev.has_attempt_change()) {
            const auto& a = ev.attempt_change();
            if (a.state() == v1::ATTEMPT_STATE_FAILED || a.state() == v1::ATTEMPT_STATE_PREEMPTED) {
              view.Line(absl::StrCat("attempt ", a.attempt_id(), " ", AttemptStateName(a.state()),
                                     a.reason().empty() ? "" : absl::StrCat(": ", a.reason())));
            }
          }
          return true;
        },
        [&](const std::string& note) { view.Line(note); });
    view.Finish();
    if (!s.ok()) return client.Fail(s, "watch");
    // The final record (the stream may end without a state change if the
    // job ended between GetJob and the watch).
    if (client.Call(&v1::JobService::Stub::GetJob, greq, &j).ok()) {
      final_state = j.state();
      final_reason = j.state_reason();
    }
  }
  view.Finish();
  std::printf("%s %s%s\n", j.name().c_str(), StateName(final_state).c_str(),
              final_reason.empty() ? "" : absl::StrCat(": ", final_reason).c_str());
  double val = j.progress().metrics().count("val_loss") ? Metric(j.progress().metrics(), "val_loss")
                                                        : view.val_loss();
  if (val <= 0 && j.has_latest_checkpoint())
    val = Metric(j.latest_checkpoint().metrics(), "val_loss");
  if (final_state == v1::JOB_STATE_SUCCEEDED && val > 0) {
    std::printf("final step %lld: val loss %.4f, perplexity %.2f\n",
                static_cast<long long>(j.progress().step()), val, std::exp(val));
  }
  if (j.has_latest_checkpoint()) {
    std::printf("checkpoint: %s\n", UriPath(j.latest_checkpoint().uri()).c_str());
  }
  std::fflush(stdout);
  return ExitForState(final_state);
}

// ---------------------------------------------------------------- cancel

int Cancel(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt cancel JOB [--reason TEXT]\n\n"
        "Cancels a pending or running job; running ranks get SIGTERM (they checkpoint, then\n"
        "exit). Cancelling a cancelled job is a no-op; a finished one is refused.");
  }
  auto started = StartJobCommand(argc, argv, {"reason"}, {}, "cancel");
  if (!started.ok()) return Fail(std::string(started.status().message()), kExitUsage);
  const Args& args = started->args;
  const std::string& name = started->job;
  Client& client = started->client;
  v1::CancelJobRequest req;
  req.set_name(name);
  req.set_reason(args.Get("reason", "cancelled with llmt cancel"));
  v1::Job j;
  if (absl::Status s = client.Call(&v1::JobService::Stub::CancelJob, req, &j); !s.ok()) {
    return client.Fail(s, "cancel");
  }
  std::printf("%s %s\n", j.name().c_str(), StateName(j.state()).c_str());
  return kExitOk;
}

// ---------------------------------------------------------------- checkpoints

int Checkpoints(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt checkpoints JOB [--latest]\n\n"
        "Lists the job's committed checkpoints (ascending step). --latest prints only the\n"
        "directory of the newest one (for scripts: llmt sample --checkpoint \"$(...)\").");
  }
  auto started = StartJobCommand(argc, argv, {}, {"latest"}, "checkpoints");
  if (!started.ok()) return Fail(std::string(started.status().message()), kExitUsage);
  const Args& args = started->args;
  const std::string& name = started->job;
  Client& client = started->client;
  v1::ListCheckpointsRequest req;
  req.set_name(name);
  v1::ListCheckpointsResponse resp;
  if (absl::Status s = client.Call(&v1::JobService::Stub::ListCheckpoints, req, &resp); !s.ok()) {
    return client.Fail(s, "checkpoints");
  }
  if (args.Has("latest")) {
    if (resp.checkpoints_size() == 0) {
      return Fail(absl::StrCat(name, " has no committed checkpoint"), kExitNotFound);
    }
    std::printf("%s\n", UriPath(resp.checkpoints(resp.checkpoints_size() - 1).uri()).c_str());
    return kExitOk;
  }
  std::printf("%-9s %-9s %-10s %-13s %-20s %s\n", "STEP", "VAL_LOSS", "SIZE", "SHA256", "CREATED",
              "DIRECTORY");
  for (const auto& c : resp.checkpoints()) {
    std::string vl = c.metrics().count("val_loss") ? Trim(Metric(c.metrics(), "val_loss"), 4) : "-";
    std::printf("%-9lld %-9s %-10s %-13s %-20s %s\n", static_cast<long long>(c.step()), vl.c_str(),
                FormatBytes(c.bytes()).c_str(), c.sha256().substr(0, 12).c_str(),
                FormatTime(c.create_time_us()).c_str(), UriPath(c.uri()).c_str());
  }
  return kExitOk;
}

// ---------------------------------------------------------------- logs

int Logs(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt logs JOB [-f|--follow] [--rank N]\n\n"
        "Prints the trainer output of every attempt of the job (as the workers forwarded it).\n"
        "-f keeps following until the job ends.");
  }
  auto started = StartJobCommand(argc, argv, {"rank"}, {"follow"}, "logs");
  if (!started.ok()) return Fail(std::string(started.status().message()), kExitUsage);
  const Args& args = started->args;
  const std::string& name = started->job;
  Client& client = started->client;
  auto rank = args.GetInt("rank", -1);
  if (!rank.ok()) return Fail(std::string(rank.status().message()), kExitUsage);
  v1::GetJobRequest greq;
  greq.set_name(name);
  v1::Job j;
  if (absl::Status s = client.Call(&v1::JobService::Stub::GetJob, greq, &j); !s.ok()) {
    return client.Fail(s, "logs");
  }
  const bool follow = args.Has("follow");
  const int64_t caught_up = j.last_event_seq();
  if (!follow && caught_up == 0) return kExitOk;
  const bool multi = std::max(1, j.spec().resources().ranks()) > 1;
  uint64_t attempt = 0;
  absl::Status s = StreamEvents(
      client, j.name(), 0, absl::Seconds(follow ? 300 : 10),
      [&](const v1::Event& ev) {
        if (ev.has_log() && (*rank < 0 || ev.log().rank() == *rank)) {
          if (ev.log().attempt_id() != attempt) {
            attempt = ev.log().attempt_id();
            std::printf("==> attempt %llu <==\n", static_cast<unsigned long long>(attempt));
          }
          if (multi) {
            std::printf("[rank %d] %s\n", ev.log().rank(), ev.log().text().c_str());
          } else {
            std::printf("%s\n", ev.log().text().c_str());
          }
          std::fflush(stdout);
        }
        return follow || ev.seq() < caught_up;
      },
      [](const std::string& note) { std::fprintf(stderr, "llmt: %s\n", note.c_str()); });
  if (!s.ok()) return client.Fail(s, "logs");
  return kExitOk;
}

// ---------------------------------------------------------------- queue / workers

int Queue(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage(
        "usage: llmt queue\n\n"
        "Pending jobs in scheduling order, with the reason each one waits.");
  }
  auto args = ParseArgs(argc, argv, {}, {});
  if (!args.ok()) return Fail(std::string(args.status().message()), kExitUsage);
  auto client = Client::Connect(*args);
  if (!client.ok()) return Fail(std::string(client.status().message()), kExitUsage);
  v1::GetQueueRequest req;
  v1::GetQueueResponse resp;
  if (absl::Status s = client->Call(&v1::JobService::Stub::GetQueue, req, &resp); !s.ok()) {
    return client->Fail(s, "queue");
  }
  std::printf("%-4s %-10s %-5s %-12s %s\n", "POS", "JOB", "PRIO", "WAITING", "REASON");
  for (const auto& e : resp.entries()) {
    std::string waiting = FormatDuration(
        absl::ToDoubleSeconds(absl::Now() - absl::FromUnixMicros(e.queued_time_us())));
    std::printf("%-4d %-10s %-5d %-12s %s\n", e.position(), e.name().c_str(), e.priority(),
                waiting.c_str(), e.reason().c_str());
  }
  return kExitOk;
}

int Workers(int argc, char** argv) {
  if (WantsHelp(argc, argv)) {
    return Usage("usage: llmt workers\n\nRegistered workers with their capacity and state.");
  }
  auto args = ParseArgs(argc, argv, {}, {});
  if (!args.ok()) return Fail(std::string(args.status().message()), kExitUsage);
  auto client = Client::Connect(*args);
  if (!client.ok()) return Fail(std::string(client.status().message()), kExitUsage);
  v1::ListWorkersRequest req;
  v1::ListWorkersResponse resp;
  if (absl::Status s = client->Call(&v1::JobService::Stub::ListWorkers, req, &resp); !s.ok()) {
    return client->Fail(s, "workers");
  }
  std::printf("%-20s %-6s %-5s %-5s %-16s %s\n", "WORKER", "STATE", "GPUS", "CPUS", "ADDRESS",
              "LAST HEARTBEAT");
  for (const auto& w : resp.workers()) {
    std::string state = StripEnumPrefix(v1::WorkerState_Name(w.state()), "WORKER_STATE_");
    std::printf("%-20s %-6s %-5d %-5d %-16s %s\n", w.id().c_str(), state.c_str(),
                w.capacity().gpus_size(), w.capacity().cpu_cores(), w.address().c_str(),
                FormatAge(w.last_heartbeat_us()).c_str());
  }
  return kExitOk;
}

}  // namespace

bool IsRemoteCommand(const char* cmd) {
  for (const char* c :
       {"submit", "get", "list", "watch", "cancel", "checkpoints", "logs", "queue", "workers"}) {
    if (std::strcmp(cmd, c) == 0) return true;
  }
  return false;
}

int RunRemote(int argc, char** argv) {
  const std::string cmd = argv[1];
  if (cmd == "submit") return Submit(argc, argv);
  if (cmd == "get") return Get(argc, argv);
  if (cmd == "list") return List(argc, argv);
  if (cmd == "watch") return Watch(argc, argv);
  if (cmd == "cancel") return Cancel(argc, argv);
  if (cmd == "checkpoints") return Checkpoints(argc, argv);
  if (cmd == "logs") return Logs(argc, argv);
  if (cmd == "queue") return Queue(argc, argv);
  if (cmd == "workers") return Workers(argc, argv);
  return Fail(absl::StrCat("unknown remote command '", cmd, "'"), kExitUsage);
}

}  // namespace llmt::cli
