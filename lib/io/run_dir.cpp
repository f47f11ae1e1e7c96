// Run directory ownership: run id, lock and the start-over rules; see run_dir.hpp.
#include "io/run_dir.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <system_error>

#include "core/error.hpp"
#include "io/paths.hpp"

namespace p2bw::io {

namespace {

namespace fs = std::filesystem;

constexpr const char* kRunIdFile = "run_id";
constexpr const char* kLockFile = "train.lock";
constexpr const char* kRunIdHeader = "p2bw-run 1 ";

bool is_run_id(const std::string& id) {
  if (id.size() != 32) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// The run files present in `dir`, e.g. "deck.yaml, metrics.h5" ("" when none).
std::string present_run_files(const std::string& dir) {
  std::string found;
  for (const std::string& name : run_files()) {
    std::error_code error;
    if (fs::exists(fs::path(dir) / name, error)) found += (found.empty() ? "" : ", ") + name;
  }
  return found;
}

bool holds_run(const std::string& dir) {
  return !present_run_files(dir).empty();
}

}  // namespace

const std::vector<std::string>& run_files() {
  static const std::vector<std::string> files = {kRunIdFile, "deck.yaml", "metrics.h5",
                                                 "checkpoints"};
  return files;
}

std::string read_run_id(const std::string& dir) {
  const fs::path path = fs::path(dir) / kRunIdFile;
  std::error_code error;
  if (!fs::exists(path, error)) return "";
  std::ifstream file(path);
  std::string text;
  if (file) std::getline(file, text, '\0');
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const std::string header = kRunIdHeader;
  if (text.size() > 200 || text.compare(0, header.size(), header) != 0 ||
      !is_run_id(text.substr(header.size())))
    throw UserError(fmt::format(
        "{}: not a p2bw run id file: '{}' (allowed: \"{}\" and 32 hex digits, as p2bw train "
        "writes it)",
        path.string(), text.substr(0, 80), kRunIdHeader));
  return text.substr(header.size());
}

std::string new_run_id() {
  std::random_device device;
  std::string id;
  for (int i = 0; i < 4; ++i) id += fmt::format("{:08x}", static_cast<std::uint32_t>(device()));
  return id;
}

RunDir::RunDir(const std::string& dir, RunMode mode, const std::string& checkpoint_run_id)
    : dir_(dir), mode_(mode) {
  make_output_dir(dir, "output.dir");
  const fs::path lock = fs::path(dir) / kLockFile;
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0)
    throw UserError(fmt::format("output.dir {}: cannot open {}: {} (allowed: a writable folder)",
                                dir, lock.string(), std::strerror(errno)));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int why = errno;
    char pid[32] = {0};
    const ssize_t got = ::pread(lock_fd_, pid, sizeof(pid) - 1, 0);
    ::close(lock_fd_);
    lock_fd_ = -1;
    std::string holder;
    for (ssize_t i = 0; i < got && pid[i] >= '0' && pid[i] <= '9'; ++i) holder += pid[i];
    if (why == EWOULDBLOCK)
      throw UserError(fmt::format(
          "output.dir {}: another p2bw train is running in it{} (allowed: wait until it ends, or "
          "another output.dir)",
          dir, holder.empty() ? "" : fmt::format(" (pid {})", holder)));
    throw UserError(fmt::format("output.dir {}: cannot lock {}: {} (allowed: a local folder)", dir,
                                lock.string(), std::strerror(why)));
  }
  const std::string pid = fmt::format("{}\n", ::getpid());
  if (::ftruncate(lock_fd_, 0) == 0 && ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    // the pid is only for the message of a second run; the lock is what counts
  }
  const std::string recorded = read_run_id(dir);
  switch (mode) {
    case RunMode::fresh:
      if (holds_run(dir))
        throw UserError(fmt::format(
            "output.dir {} already holds a run ({}) (allowed: --resume latest to continue it, "
            "--start-over to delete its checkpoints, metrics.h5, deck.yaml and run_id and train "
            "from step 1, or another output.dir)",
            dir, present_run_files(dir)));
      run_id_ = new_run_id();
      write_id_ = true;
      break;
    case RunMode::start_over: {
      // Only what p2bw train wrote is removed: a folder without a run_id, metrics.h5 or
      // checkpoints/ is no run, and its deck.yaml may be the user's own.
      std::error_code error;
      if (recorded.empty() && fs::exists(fs::path(dir) / "deck.yaml", error) &&
          !fs::exists(fs::path(dir) / "metrics.h5", error) &&
          !fs::exists(fs::path(dir) / "checkpoints", error))
        throw UserError(fmt::format(
            "--start-over: output.dir {} holds a deck.yaml but no run (no run_id, metrics.h5 or "
            "checkpoints/), so it may be yours and is not deleted (allowed: another output.dir)",
            dir));
    }
      run_id_ = new_run_id();
      write_id_ = true;
      break;
    case RunMode::resume:
      if (!recorded.empty() && recorded != checkpoint_run_id)
        throw UserError(fmt::format(
            "--resume: the checkpoint belongs to run {}, output.dir {} holds run {} (allowed: a "
            "checkpoint of this run, or another output.dir to continue that run in)",
            checkpoint_run_id.substr(0, 40), dir, recorded));
      if (recorded.empty() && holds_run(dir))
        throw UserError(fmt::format(
            "output.dir {} holds files of a run without a run_id (allowed: another output.dir "
            "to continue the checkpoint's run in)",
            dir));
      run_id_ = checkpoint_run_id;
      write_id_ = recorded.empty();
      break;
  }
}

RunDir::~RunDir() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

void RunDir::commit() {
  if (mode_ == RunMode::start_over) {
    for (const std::string& name : run_files()) {
      std::error_code error;
      fs::remove_all(fs::path(dir_) / name, error);
      if (error)
        throw UserError(
            fmt::format("--start-over: cannot remove {}: {} (allowed: a folder p2bw "
                        "may write)",
                        (fs::path(dir_) / name).string(), error.message()));
    }
  }
  if (!write_id_) return;
  const fs::path path = fs::path(dir_) / kRunIdFile, temporary = path.string() + ".tmp";
  write_text_file(temporary.string(), std::string(kRunIdHeader) + run_id_ + "\n", "output.dir");
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error)
    throw UserError(fmt::format("output.dir {}: cannot write {}: {} (allowed: a writable folder)",
                                dir_, path.string(), error.message()));
  write_id_ = false;
}

}  // namespace p2bw::io
