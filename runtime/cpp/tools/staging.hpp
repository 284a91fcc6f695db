// restr-predict-cpp writes its outputs into a staging folder inside --out,
// `.restr-predict-cpp-<pid>-<random>`, and moves them into place when all are complete. Nothing
// half-written is left when a run dies either:
// - ended by SIGTERM, SIGINT or SIGHUP (unless ignored) or an abort, it removes the files it was
//   writing and the folders it made before it dies of the signal as it would have;
// - ended without that chance (SIGKILL, a power cut), its staging folder is stale: the next run in
//   that --out removes it. restr-predict shares the rule for its own `.restr-predict-<pid>-<random>`.
#pragma once
#include <signal.h>

#include <filesystem>
#include <string>
#include <vector>

namespace restr_cli {

// Handles SIGTERM, SIGINT, SIGHUP (those not ignored) and SIGABRT: the main thread (ONNX Runtime's
// threads pass the signal on to it) removes what a Cleanup names, then the process dies of the
// signal. Called once, at the start of main.
void handle_fatal_signals();

// While alive, a fatal signal removes `files`, then the folders `dirs` if they are empty (in order).
// Made and ended on the main thread, one at a time; to arm one for a folder just made, make both
// under HoldSignals.
class Cleanup {
 public:
  Cleanup(std::vector<std::string> files, std::vector<std::string> dirs);
  ~Cleanup();
  Cleanup(const Cleanup&) = delete;
  Cleanup& operator=(const Cleanup&) = delete;
};

// Holds the fatal signals back on the main thread while alive: one that comes meanwhile is handled
// when it ends (a folder made and its Cleanup armed, or outputs moved into place, as one step).
class HoldSignals {
 public:
  HoldSignals();
  ~HoldSignals();
  HoldSignals(const HoldSignals&) = delete;
  HoldSignals& operator=(const HoldSignals&) = delete;

 private:
  sigset_t old_;
};

// A new staging folder in `out` (which exists).
std::filesystem::path make_staging_folder(const std::filesystem::path& out);

// Removes the staging folders in `out` whose process is gone, restr-predict-cpp's and restr-predict's
// (`^\.restr-predict(-cpp)?-([0-9]+)-[A-Za-z0-9_]+$`, that pid not alive: kill(pid, 0) fails with
// ESRCH). One of a run still alive is left alone. Failures are ignored: what stays counts as files.
void remove_stale_staging(const std::filesystem::path& out);

}  // namespace restr_cli
