// The p2bw executable: initialises MPI and Kokkos, dispatches to a subcommand, and turns errors
// into one-line messages with exit code 2 (user errors) or 1 (internal errors).
#include <fmt/format.h>
#include <mpi.h>
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "command.hpp"
#include "core/build_info.hpp"
#include "core/error.hpp"
#include "kernels/gemm.hpp"
#include "kokkos_options.hpp"

#ifdef KOKKOS_ENABLE_CUDA
#include <cuda_runtime.h>
#endif

namespace {

int run_cli(int argc, char** argv, const p2bw::app::Context& context) {
  CLI::App app{
      "p2bw: pipeline-parallel training of transformer language models "
      "(PipeDream-2BW, PipeDream-Flush, GPipe) on Kokkos and MPI"};
  app.require_subcommand(0, 1);
  bool version = false;
  app.add_flag("--version", version,
               "print the version and the build's Kokkos, MPI, HDF5 and NCCL");

  std::vector<p2bw::app::Command> commands = {
      p2bw::app::add_check(app),    p2bw::app::add_prepare_data(app), p2bw::app::add_train(app),
      p2bw::app::add_simulate(app), p2bw::app::add_bench(app),        p2bw::app::add_inspect(app),
      p2bw::app::add_plan(app),     p2bw::app::add_profile(app),      p2bw::app::add_generate(app)};
  // Kokkos 3.7 renamed --kokkos-threads (Debian's 3.4.01) to --kokkos-num-threads (4.x).
  const char* kokkos_footer =
#if KOKKOS_VERSION >= 30700
      "Kokkos's own options (--kokkos-num-threads, --kokkos-device-id, ...) are accepted too: "
#else
      "Kokkos's own options (--kokkos-threads, --kokkos-device-id, ...) are accepted too: "
#endif
      "p2bw --kokkos-help lists them.";
  app.footer(kokkos_footer);
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    sub->footer(kokkos_footer);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    if (context.root()) std::fputs(app.help().c_str(), stdout);
    return p2bw::kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    if (context.root()) std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
    return p2bw::kExitOk;
  } catch (const CLI::ParseError& error) {
    if (context.root()) fmt::print(stderr, "error: {} (run p2bw --help)\n", error.what());
    return p2bw::kExitUser;
  }
  if (version) {
    const std::string text = p2bw::build_description();
    if (context.root()) std::fputs(text.c_str(), stdout);
    return p2bw::kExitOk;
  }
  for (const p2bw::app::Command& command : commands) {
    if (command.cli->parsed()) return command.run(context);
  }
  if (context.root()) std::fputs(app.help().c_str(), stdout);
  return p2bw::kExitOk;
}

// With GPUs, local rank i of a node uses GPU i mod (GPUs on the node), unless the user chose a
// device (KOKKOS_DEVICE_ID or --kokkos-device-id).
void choose_device(MPI_Comm world) {
#ifdef KOKKOS_ENABLE_CUDA
  if (std::getenv("KOKKOS_DEVICE_ID")) return;
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_rank = 0, devices = 0;
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_free(&node);
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
    setenv("KOKKOS_DEVICE_ID", std::to_string(local_rank % devices).c_str(), 0);
#else
  (void)world;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  p2bw::app::Context context;
  MPI_Comm_rank(context.world, &context.rank);
  MPI_Comm_size(context.world, &context.size);
  // A CUDA build without a usable GPU: Kokkos would abort with a traceback. --help and --version
  // need no device and are answered; anything else stops with one line.
  if (const std::string missing = p2bw::missing_device(); !missing.empty()) {
    bool help = false;
    for (int i = 1; i < argc; ++i)
      help = help || std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0 ||
             std::strcmp(argv[i], "--version") == 0;
    int code = p2bw::kExitInternal;
    if (help)
      code = run_cli(argc, argv, context);
    else if (context.root())
      fmt::print(stderr, "error: {}: this p2bw is a {} build and needs a GPU and its driver\n",
                 missing, p2bw::kokkos_description());
    MPI_Finalize();
    return code;
  }
  choose_device(context.world);
  // Kokkos aborts with a backtrace on an option or KOKKOS_* variable it cannot read.
  if (const std::string bad = p2bw::app::bad_kokkos_input(argc, argv); !bad.empty()) {
    if (context.root()) fmt::print(stderr, "error: {}\n", p2bw::escape_for_message(bad));
    MPI_Finalize();
    return p2bw::kExitUser;
  }
  // Kokkos prints its ~40 lines of options on --help; p2bw's --help shows p2bw's alone, so Kokkos
  // gets the arguments without it (the help's footer names --kokkos-help, which Kokkos answers).
  // Kokkos removes the --kokkos-* options it took from its copy; the command line parsed by
  // p2bw keeps the other arguments, --help included, in their order.
  bool kokkos_help = false;
  std::vector<char*> kokkos_argv;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::strcmp(argv[i], "--help") == 0) continue;
    if (std::strcmp(argv[i], "--kokkos-help") == 0) kokkos_help = true;
    kokkos_argv.push_back(argv[i]);
  }
  int kokkos_argc = static_cast<int>(kokkos_argv.size());
  kokkos_argv.push_back(nullptr);
  Kokkos::initialize(kokkos_argc, kokkos_argv.data());
  if (kokkos_help) {  // Kokkos printed its options
    Kokkos::finalize();
    MPI_Finalize();
    return p2bw::kExitOk;
  }
  {
    const std::vector<char*> left(kokkos_argv.begin(), kokkos_argv.begin() + kokkos_argc);
    int kept = 0;
    for (int i = 0; i < argc; ++i) {
      if (i == 0 || std::strcmp(argv[i], "--help") == 0 ||
          std::find(left.begin(), left.end(), argv[i]) != left.end())
        argv[kept++] = argv[i];
    }
    argc = kept;
  }
  int code = p2bw::kExitOk;
  try {
    code = run_cli(argc, argv, context);
  } catch (const p2bw::UserError& error) {
    // Collective code paths raise user errors on every rank; rank 0 speaks for all.
    if (context.root()) fmt::print(stderr, "error: {}\n", error.what());
    code = p2bw::kExitUser;
  } catch (const std::exception& error) {
    fmt::print(stderr, "error: rank {}: {}\n", context.rank, error.what());
    std::fflush(stderr);
    // mpiexec forwards a rank's stderr asynchronously; MPI_Abort kills the job at once and could
    // drop the message. A moment's pause lets the one line that explains the failure through.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    p2bw::kernels::release_gemm_resources();
    Kokkos::finalize();
    MPI_Abort(context.world, p2bw::kExitInternal);
    return p2bw::kExitInternal;
  }
  p2bw::kernels::release_gemm_resources();  // GEMM buffers and cuBLAS handles die before Kokkos
  Kokkos::finalize();
  MPI_Finalize();
  return code;
}
