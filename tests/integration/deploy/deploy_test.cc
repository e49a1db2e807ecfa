// deploy/ checks: the Kubernetes overlays render with kubectl's kustomize and
// pass offline schema/reference validation and yamllint; the alert rules and
// scrape config pass promtool (and the rules' unit tests); the Dockerfiles
// pass the linter; the image build script installs working binaries; and a
// real Prometheus scraping a real coordinator and worker during a CPU job
// answers every dashboard and alert query (prometheus_e2e.py).
//
// The tools come from scripts/install-deps.sh (prometheus, yamllint,
// python3-kubernetes, openssl) and the machine image (kubectl): a missing one
// fails the test with the package to install, it never skips.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/subprocess.h"

namespace {

namespace fs = std::filesystem;
using ::llmt::testing::FreshDir;
using ::llmt::testing::Process;
using ::llmt::testing::ReadFileOrEmpty;
using ::llmt::testing::RunCommand;
using ::llmt::testing::RunResult;
using ::llmt::testing::WaitFor;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kSrc = LLMT_SOURCE_DIR;
const std::string kBuild = LLMT_BINARY_DIR;
const std::string kPython = "/usr/bin/python3";

std::string Src(const std::string& rel) { return kSrc + "/" + rel; }

// Runs a shell command line (for redirections); output is stdout+stderr.
RunResult Sh(const std::string& cmd, int timeout_s = 120) {
  return RunCommand({"/bin/bash", "-c", cmd}, timeout_s);
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Removes a test's directory unless the test failed (then it is kept to look at).
void CleanUp(const std::string& dir) {
  if (!::testing::Test::HasFailure()) fs::remove_all(dir);
}

// Fails the calling test (loudly, naming the package) when `tool` is missing.
#define REQUIRE_TOOL(tool, package)                                                    \
  do {                                                                                 \
    if (Sh("command -v " tool).exit_code != 0) {                                       \
      FAIL() << tool " not found: install " package " (scripts/install-deps.sh does)"; \
    }                                                                                  \
  } while (0)

void RequirePythonModule(const std::string& module, const std::string& package) {
  RunResult r = RunCommand({kPython, "-c", "import " + module});
  ASSERT_EQ(r.exit_code, 0) << "python module " << module << " missing: install " << package
                            << " (scripts/install-deps.sh does)\n"
                            << r.output;
}

// kubectl's embedded kustomize must understand `labels:` and directory
// resources (kubectl >= 1.21, kustomize v4+).
void RequireKubectl() {
  if (Sh("command -v kubectl").exit_code != 0) {
    FAIL() << "kubectl not found: the machine image ships it "
              "(google-cloud-cli's kubectl); "
              "elsewhere install kubectl >= 1.21 (Debian 12's "
              "kubernetes-client 1.20 embeds "
              "kustomize v2, too old for these overlays)";
  }
  RunResult v = Sh("kubectl version --client -o json");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(v.output, m, std::regex("\"minor\":\\s*\"(\\d+)"))) << v.output;
  ASSERT_GE(std::stoi(m[1]), 21) << "kubectl 1." << m[1] << " embeds a kustomize older than v4";
}

// Renders an overlay to `out` (kubectl's warnings go to a separate file).
void Render(const std::string& overlay_dir, const std::string& out) {
  RunResult r = Sh("kubectl kustomize " + Quote(overlay_dir) + " > " + Quote(out) + " 2> " +
                   Quote(out + ".stderr"));
  ASSERT_EQ(r.exit_code, 0) << "kubectl kustomize " << overlay_dir << " failed:\n"
                            << ReadFileOrEmpty(out + ".stderr");
}

RunResult Validate(const std::string& rendered) {
  return RunCommand({kPython,
                     Src("deploy/tools/validate_k8s.py"),
                     rendered,
                     "--expect-kind",
                     "StatefulSet",
                     "--expect-kind",
                     "Service",
                     "--expect-kind",
                     "NetworkPolicy",
                     "--expect-kind",
                     "PodDisruptionBudget",
                     "--expect-kind",
                     "PrometheusRule",
                     "--expect-kind",
                     "ServiceMonitor",
                     "--expect-kind",
                     "PodMonitor",
                     "--expect-kind",
                     "Secret",
                     "--expect-kind",
                     "ConfigMap",
                     "--expect-kind",
                     "ServiceAccount",
                     "--expect-kind",
                     "PersistentVolumeClaim"});
}

// RunCommand execs argv[0] as a path; tools on $PATH go through env.
RunResult Tool(std::vector<std::string> argv, int timeout_s = 120) {
  argv.insert(argv.begin(), "/usr/bin/env");
  return RunCommand(argv, timeout_s);
}

RunResult Yamllint(const std::string& path) {
  return Tool({"yamllint", "-f", "parsable", "-c", Src("deploy/yamllint.yml"), path});
}

class DeployK8s : public ::testing::Test {
 protected:
  void SetUp() override {
    RequireKubectl();
    REQUIRE_TOOL("yamllint", "yamllint");
    RequirePythonModule("kubernetes.client", "python3-kubernetes");
    dir_ = FreshDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);  // keep what a failure produced
  }
  std::string dir_;
};

TEST_F(DeployK8s, CpuDevOverlayRendersAndValidates) {
  std::string out = dir_ + "/cpu-dev.yaml";
  ASSERT_NO_FATAL_FAILURE(Render(Src("deploy/k8s/overlays/cpu-dev"), out));
  RunResult v = Validate(out);
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_THAT(v.output, HasSubstr("objects valid"));
  RunResult y = Yamllint(out);
  EXPECT_EQ(y.exit_code, 0) << y.output;
  std::string text = ReadFileOrEmpty(out);
  // CPU-only: no GPU requested; the dev images; single-node volumes.
  EXPECT_THAT(text, Not(HasSubstr("nvidia.com/gpu")));
  EXPECT_THAT(text, HasSubstr("image: llmt-worker:dev-cpu"));
  EXPECT_THAT(text, Not(HasSubstr("ReadWriteMany")));
}

TEST_F(DeployK8s, GpuOverlayRendersWithGeneratedSecretsAndValidates) {
  REQUIRE_TOOL("openssl", "openssl");
  // The overlay reads its secrets from files: work on a copy of deploy/k8s so
  // the checkout's secrets/ stays untouched, and create them like an operator.
  fs::copy(Src("deploy/k8s"), dir_ + "/k8s", fs::copy_options::recursive);
  fs::remove_all(dir_ + "/k8s/overlays/gpu/secrets");
  RunResult s = RunCommand({dir_ + "/k8s/overlays/gpu/make-secrets.sh"});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  std::string sec = dir_ + "/k8s/overlays/gpu/secrets";
  RunResult verify = Tool({"openssl", "verify", "-CAfile", sec + "/ca.crt", sec + "/tls.crt"});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  RunResult san =
      Tool({"openssl", "x509", "-in", sec + "/tls.crt", "-noout", "-ext", "subjectAltName"});
  EXPECT_THAT(san.output, HasSubstr("DNS:llmt-coordinator.llmt.svc"));
  // A second run keeps the existing files (no silent CA rotation).
  std::string token = ReadFileOrEmpty(sec + "/api-tokens");
  ASSERT_EQ(RunCommand({dir_ + "/k8s/overlays/gpu/make-secrets.sh"}).exit_code, 0);
  EXPECT_EQ(ReadFileOrEmpty(sec + "/api-tokens"), token);
  EXPECT_EQ(token.size(), 65u);  // 32 random bytes in hex + newline

  std::string out = dir_ + "/gpu.yaml";
  ASSERT_NO_FATAL_FAILURE(Render(dir_ + "/k8s/overlays/gpu", out));
  RunResult v = Validate(out);
  EXPECT_EQ(v.exit_code, 0) << v.output;
  RunResult y = Yamllint(out);
  EXPECT_EQ(y.exit_code, 0) << y.output;
  std::string text = ReadFileOrEmpty(out);
  EXPECT_THAT(text, HasSubstr("nvidia.com/gpu: \"8\""));
  EXPECT_THAT(text, HasSubstr("type: kubernetes.io/tls"));
  EXPECT_THAT(text, HasSubstr("--tls_cert=/etc/llmt/tls/tls.crt"));
  EXPECT_THAT(text, HasSubstr("ReadWriteMany"));
}

// Every flag deploy/ hands the daemons (ConfigMap flag files, container args,
// Dockerfile CMDs) is parsed by the real binaries: a renamed or mistyped flag
// would crash-loop the pods.
TEST_F(DeployK8s, DaemonsAcceptTheFlagsDeployGivesThem) {
#ifndef LLMT_HAVE_WORKER
  GTEST_SKIP() << "llmt-worker is not part of this build: its flags cannot be checked";
#else
  REQUIRE_TOOL("openssl", "openssl");
  fs::copy(Src("deploy/k8s"), dir_ + "/k8s", fs::copy_options::recursive);
  fs::remove_all(dir_ + "/k8s/overlays/gpu/secrets");
  ASSERT_EQ(RunCommand({dir_ + "/k8s/overlays/gpu/make-secrets.sh"}).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(Render(dir_ + "/k8s/overlays/cpu-dev", dir_ + "/cpu-dev.yaml"));
  ASSERT_NO_FATAL_FAILURE(Render(dir_ + "/k8s/overlays/gpu", dir_ + "/gpu.yaml"));
  std::vector<std::string> argv = {
      kPython,        Src("deploy/tools/check_flags.py"),
      "--binary",     "coordinator=" + kBuild + "/coordinator/llmt-coordinator",
      "--binary",     "worker=" + kBuild + "/worker/daemon/llmt-worker",
      "--manifests",  dir_ + "/cpu-dev.yaml",
      "--manifests",  dir_ + "/gpu.yaml",
      "--dockerfile", "coordinator=" + Src("deploy/docker/coordinator.Dockerfile"),
      "--dockerfile", "worker=" + Src("deploy/docker/worker.Dockerfile")};
  RunResult r = RunCommand(argv);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("6 flag set(s) checked, 0 problem(s)"));

  // A bad value in a flag file is caught.
  std::string text = ReadFileOrEmpty(dir_ + "/cpu-dev.yaml");
  size_t pos = text.find("--lease_timeout=15s");
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, 19, "--lease_timeout=15 seconds");
  std::ofstream(dir_ + "/bad.yaml") << text;
  argv = {kPython,       Src("deploy/tools/check_flags.py"),
          "--binary",    "coordinator=" + kBuild + "/coordinator/llmt-coordinator",
          "--binary",    "worker=" + kBuild + "/worker/daemon/llmt-worker",
          "--manifests", dir_ + "/bad.yaml"};
  RunResult bad = RunCommand(argv);
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_THAT(bad.output, HasSubstr("Illegal value '15 seconds'"));
#endif
}

// The validator is only worth something if it rejects what would not deploy.
TEST_F(DeployK8s, ValidatorRejectsBrokenManifests) {
  std::string good = dir_ + "/good.yaml";
  ASSERT_NO_FATAL_FAILURE(Render(Src("deploy/k8s/overlays/cpu-dev"), good));
  std::string text = ReadFileOrEmpty(good);
  struct Case {
    std::string name, from, to, expect;
  };
  const std::vector<Case> cases = {
      {"dangling secret", "secretName: llmt-tokens-", "secretName: llmt-tokenz-",
       "which is not defined"},
      {"unknown field", "runAsNonRoot: true", "runAsNonRot: true", "unknown field 'runAsNonRot'"},
      {"unquoted label", "llmt.dev/coordinator-client: \"true\"",
       "llmt.dev/coordinator-client: true", "expected a string"},
      {"probe port", "port: metrics", "port: metricz", "does not name"},
      {"root user", "runAsUser: 10001", "runAsUser: 0", "non-zero uid"},
      {"wrong type", "replicas: 2", "replicas: two", "expected an integer"},
      {"missing flagfile", "overlay.flags: |", "other.flags: |", "--flagfile"},
  };
  for (const Case& c : cases) {
    size_t pos = text.find(c.from);
    ASSERT_NE(pos, std::string::npos) << c.name << ": '" << c.from << "' not in the render";
    std::string broken = text;
    for (; pos != std::string::npos; pos = broken.find(c.from, pos + c.to.size())) {
      broken.replace(pos, c.from.size(), c.to);
    }
    std::string path = dir_ + "/broken.yaml";
    std::ofstream(path) << broken;
    RunResult v = Validate(path);
    EXPECT_EQ(v.exit_code, 1) << c.name << ":\n" << v.output;
    EXPECT_THAT(v.output, HasSubstr(c.expect)) << c.name;
  }
}

TEST_F(DeployK8s, SourcesPassYamllintAndGeneratedRulesAreCurrent) {
  RunResult y = Yamllint(Src("deploy"));
  EXPECT_EQ(y.exit_code, 0) << y.output;
  RunResult s = RunCommand({kPython, Src("deploy/tools/sync_rules.py"), "--check"});
  EXPECT_EQ(s.exit_code, 0) << s.output;
}

class DeployPrometheus : public ::testing::Test {
 protected:
  void SetUp() override { REQUIRE_TOOL("promtool", "prometheus"); }
};

TEST_F(DeployPrometheus, PromtoolChecksRulesConfigAndRuleTests) {
  RunResult rules =
      Tool({"promtool", "check", "rules", Src("deploy/prometheus/rules/llmt-alerts.yml")});
  EXPECT_EQ(rules.exit_code, 0) << rules.output;
  EXPECT_THAT(rules.output, HasSubstr("SUCCESS"));
  RunResult config = Tool({"promtool", "check", "config", Src("deploy/prometheus/prometheus.yml")});
  EXPECT_EQ(config.exit_code, 0) << config.output;
  // Alert behaviour on synthetic series: each alert fires when it should and
  // stays quiet when it should not.
  RunResult tests =
      Tool({"promtool", "test", "rules", Src("deploy/prometheus/rules/llmt-alerts.test.yml")});
  EXPECT_EQ(tests.exit_code, 0) << tests.output;
  EXPECT_THAT(tests.output, HasSubstr("SUCCESS"));
}

TEST(DeployDocker, DockerfilesPassTheLinter) {
  RunResult r = RunCommand({kPython, Src("deploy/tools/lint_dockerfiles.py")});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 Dockerfile(s) clean"));

  // And it catches the mistakes it is for.
  std::string dir = FreshDir("dockerfile-lint");
  std::string text = ReadFileOrEmpty(Src("deploy/docker/coordinator.Dockerfile"));
  struct Case {
    std::string from, to, expect;
  };
  const std::vector<Case> cases = {
      {"USER 10001:10001", "USER root", "numeric uid"},
      {"COPY bench/ bench/", "COPY benchmarks/ benchmarks/", "does not exist"},
      {"HEALTHCHECK --interval", "LABEL x=y\n# HEALTHCHECK --interval", "no HEALTHCHECK"},
      {"FROM debian:12-slim", "FROM debian", "not pinned"},
      {"--no-install-recommends < ", "< ", "--no-install-recommends"},
      {"/opt/llmt/bin/llmt-coordinator\"]", "/opt/llmt/bin/llmt-worker\"]", "not installed"},
  };
  for (const Case& c : cases) {
    size_t pos = text.find(c.from);
    ASSERT_NE(pos, std::string::npos) << c.from;
    std::string broken = text;
    broken.replace(pos, c.from.size(), c.to);
    std::string path = dir + "/coordinator.Dockerfile";
    std::ofstream(path) << broken;
    RunResult b = RunCommand({kPython, Src("deploy/tools/lint_dockerfiles.py"), path});
    EXPECT_EQ(b.exit_code, 1) << c.to << ":\n" << b.output;
    EXPECT_THAT(b.output, HasSubstr(c.expect)) << c.to;
  }
  CleanUp(dir);
}

// The image build steps, run outside Docker against this build tree: the
// installed coordinator starts from the prefix, its runtime package list
// covers its libraries, and the image's HEALTHCHECK script sees it healthy.
TEST(DeployDocker, BuildScriptInstallsARunnableCoordinator) {
  std::string dir = FreshDir("image-coordinator");
  // Step 1 as the image runs it: a fresh Release configuration for a portable
  // ISA, services on, tests off.
  RunResult c = RunCommand({Src("deploy/docker/build.sh"), "--component", "coordinator", "--prefix",
                            dir + "/opt", "--build-dir", dir + "/build", "--configure-only"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  std::string cache = ReadFileOrEmpty(dir + "/build/CMakeCache.txt");
  for (const char* entry :
       {"LLMT_NATIVE:BOOL=OFF", "LLMT_BUILD_TESTS:BOOL=OFF", "LLMT_BUILD_SERVICES:BOOL=ON",
        "LLMT_CUDA:STRING=OFF", "CMAKE_CXX_FLAGS:STRING=-march=x86-64-v3",
        "CMAKE_BUILD_TYPE:STRING=Release"}) {
    EXPECT_THAT(cache, HasSubstr(entry));
  }
  fs::remove_all(dir + "/build");
  // Steps 3-5 on this (already built) tree: --no-build, so binaries that other
  // tests run are never relinked underneath them.
  RunResult b = RunCommand({Src("deploy/docker/build.sh"), "--component", "coordinator", "--prefix",
                            dir + "/opt", "--build-dir", kBuild, "--no-build"});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  std::string pkgs = ReadFileOrEmpty(dir + "/opt/share/llmt/runtime-packages.txt");
  for (const char* p : {"libgrpc++1.51", "librocksdb", "libprotobuf32", "libcivetweb1",
                        "libabsl20220623", "libc6"}) {
    EXPECT_THAT(pkgs, HasSubstr(p));
  }
  EXPECT_EQ(ReadFileOrEmpty(dir + "/opt/share/llmt/unpackaged-libs.txt"), "");

  Process coord(
      {dir + "/opt/bin/llmt-coordinator", "--data_dir=" + dir + "/db", "--listen=127.0.0.1:0",
       "--http_listen=127.0.0.1:0", "--port_file=" + dir + "/ports"},
      dir + "/coordinator.log");
  std::string http_port;
  ASSERT_TRUE(WaitFor(
      [&] {
        std::smatch m;
        std::string ports = ReadFileOrEmpty(dir + "/ports");
        if (!std::regex_search(ports, m, std::regex("http_port=(\\d+)"))) return false;
        http_port = m[1];
        return true;
      },
      // Usually ~0.1 s; once, on a loaded 2-vCPU CI machine (a TLS e2e test
      // beside it), not within 15 s, so the bound only guards against a hang.
      60000))
      << ReadFileOrEmpty(dir + "/coordinator.log");
  std::string hc = Src("deploy/docker/healthcheck.sh");
  bool ready = WaitFor(
      [&] {
        return RunCommand({hc, http_port, "/readyz"}).exit_code == 0;
      },
      15000);
  EXPECT_TRUE(ready) << ReadFileOrEmpty(dir + "/coordinator.log");
  EXPECT_EQ(RunCommand({hc, http_port}).exit_code, 0);
  RunResult missing = RunCommand({hc, http_port, "/no-such-page"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.output, HasSubstr("404"));
  coord.Signal(SIGTERM);
  EXPECT_EQ(coord.Wait(20), 0);
  RunResult down = RunCommand({hc, http_port});
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_THAT(down.output, HasSubstr("nothing listens"));
  CleanUp(dir);
}

#ifdef LLMT_HAVE_WORKER
TEST(DeployDocker, BuildScriptInstallsTheWorkerWithTrainerAndTokenizerShim) {
  std::string dir = FreshDir("image-worker");
  RunResult b = RunCommand({Src("deploy/docker/build.sh"), "--component", "worker", "--prefix",
                            dir + "/opt", "--build-dir", kBuild, "--no-build"});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  for (const char* f : {"/opt/bin/llmt-worker", "/opt/bin/llmt", "/opt/lib/llmt/libllmt_spm.so"}) {
    EXPECT_TRUE(fs::exists(dir + f)) << f;
  }
  std::string pkgs = ReadFileOrEmpty(dir + "/opt/share/llmt/runtime-packages.txt");
  EXPECT_THAT(pkgs, HasSubstr("libsentencepiece0"));  // through the shim
  EXPECT_THAT(pkgs, HasSubstr("libopenblas"));
  CleanUp(dir);
}
#endif

// A real Prometheus scrapes a real coordinator and worker while a CPU job
// trains; every dashboard and alert expression is then evaluated.
TEST(DeployE2E, PrometheusScrapesDaemonsAndAnswersEveryDashboardAndAlertQuery) {
#ifndef LLMT_HAVE_WORKER
  GTEST_SKIP() << "llmt-worker is not part of this build (worker/daemon has no CMake "
                  "target "
                  "yet): the end-to-end Prometheus check needs a running worker";
#else
  REQUIRE_TOOL("prometheus", "prometheus");
  REQUIRE_TOOL("promtool", "prometheus");
  RequirePythonModule("yaml", "python3-yaml");
  std::string dir = FreshDir("prometheus-e2e");
  RunResult r = RunCommand({kPython, Src("tests/integration/deploy/prometheus_e2e.py"),
                            "--build-dir", kBuild, "--work-dir", dir + "/work"},
                           240);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("0 failing"));
  EXPECT_THAT(r.output, HasSubstr("passed in"));
  std::cout << r.output;
  CleanUp(dir);
#endif
}

}  // namespace
