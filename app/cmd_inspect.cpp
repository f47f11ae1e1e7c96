// `p2bw inspect FILE`: validates and summarises an HDF5 file written by p2bw: the metrics of a
// training run (p2bw-metrics) or the timeline of p2bw simulate (p2bw-simulation). Any other file
// is a one-line user error naming the formats it knows.
#include <fmt/format.h>

#include <memory>

#include "command.hpp"
#include "io/metrics_file.hpp"

namespace p2bw::app {

Command add_inspect(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  CLI::App* cli = app.add_subcommand(
      "inspect", "summarise a metrics file (p2bw train) or a timeline (p2bw simulate)");
  cli->add_option("file", *path, "HDF5 file: <output.dir>/metrics.h5 or simulation.h5")
      ->required()
      ->type_name("FILE");
  return {cli, [path](const Context& context) {
            // Reading is serial: rank 0 alone reads and prints (any other rank has nothing to do).
            if (!context.root()) return 0;
            fmt::print("{}", io::summarize_hdf5(*path));
            return 0;
          }};
}

}  // namespace p2bw::app
