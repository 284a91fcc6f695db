#include "staging.hpp"

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <limits>
#include <system_error>

#include "image.hpp"

namespace fs = std::filesystem;

namespace restr_cli {

namespace {

constexpr int kSignals[] = {SIGTERM, SIGINT, SIGHUP, SIGABRT};

// What a fatal signal removes: written while no handler reads it (g_armed false, the signals held),
// then only read. The handler calls getpid, syscall, unlink, rmdir, signal and raise: all
// async-signal-safe, no allocation, no lock.
std::vector<std::string> g_files, g_dirs;
std::atomic<bool> g_armed{false};

sigset_t fatal_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kSignals) sigaddset(&set, s);
  return set;
}

void on_fatal_signal(int sig) {
  const pid_t pid = getpid();
  // On an ONNX Runtime thread, a signal from outside goes on to the main thread (whose tid is the pid),
  // where HoldSignals can hold it while outputs move into place. An abort is handled where it happens.
  if (sig != SIGABRT && syscall(SYS_gettid) != pid) {
    syscall(SYS_tgkill, pid, pid, sig);
    return;
  }
  if (g_armed.load()) {
    for (const std::string& f : g_files) unlink(f.c_str());
    for (const std::string& d : g_dirs) rmdir(d.c_str());
  }
  signal(sig, SIG_DFL);  // then die of it: the exit status says which signal it was
  raise(sig);
}

}  // namespace

void handle_fatal_signals() {
  struct sigaction action = {};
  action.sa_handler = on_fatal_signal;
  action.sa_mask = fatal_signals();
  for (int s : kSignals) {
    struct sigaction old = {};
    if (sigaction(s, nullptr, &old) == 0 && old.sa_handler != SIG_IGN) sigaction(s, &action, nullptr);  // nohup's SIGHUP stays ignored
  }
}

Cleanup::Cleanup(std::vector<std::string> files, std::vector<std::string> dirs) {
  g_armed = false;
  g_files = std::move(files);
  g_dirs = std::move(dirs);
  g_armed = true;
}

Cleanup::~Cleanup() { g_armed = false; }

HoldSignals::HoldSignals() {
  const sigset_t set = fatal_signals();
  pthread_sigmask(SIG_BLOCK, &set, &old_);
}

HoldSignals::~HoldSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

fs::path make_staging_folder(const fs::path& out) {
  std::string name = (out / (".restr-predict-cpp-" + std::to_string(getpid()) + "-XXXXXX")).string();
  if (!mkdtemp(name.data())) throw FileError(out.string() + ": cannot create a temporary folder");
  return name;
}

// The pid in a staging folder's name, `^\.restr-predict(-cpp)?-([0-9]+)-[A-Za-z0-9_]+$`; "" for another name.
std::string staging_pid(const std::string& name) {
  auto all = [](const std::string& s, auto ok) { return !s.empty() && std::all_of(s.begin(), s.end(), [&](unsigned char c) { return ok(c); }); };
  for (const std::string prefix : {".restr-predict-cpp-", ".restr-predict-"}) {
    const size_t dash = name.find('-', prefix.size());
    if (name.compare(0, prefix.size(), prefix) != 0 || dash == std::string::npos) continue;
    const std::string pid = name.substr(prefix.size(), dash - prefix.size()), rest = name.substr(dash + 1);
    if (all(pid, [](int c) { return std::isdigit(c); }) && all(rest, [](int c) { return std::isalnum(c) || c == '_'; })) return pid;
  }
  return "";
}

void remove_stale_staging(const fs::path& out) {
  std::vector<fs::path> stale;
  std::error_code ec;
  for (fs::directory_iterator it(out, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string pid = staging_pid(it->path().filename().string());
    std::error_code type_ec;
    if (pid.empty() || it->symlink_status(type_ec).type() != fs::file_type::directory) continue;
    errno = 0;
    const unsigned long long n = std::strtoull(pid.c_str(), nullptr, 10);
    // a pid no process can have (past pid_t), or one that names no process
    if (errno == ERANGE || n > static_cast<unsigned long long>(std::numeric_limits<pid_t>::max()) ||
        (kill(static_cast<pid_t>(n), 0) != 0 && errno == ESRCH))
      stale.push_back(it->path());
  }
  for (const fs::path& p : stale) fs::remove_all(p, ec);
}

}  // namespace restr_cli
