// Checks and text helpers shared by the readers of p2bw's HDF5 formats (metrics.h5 and the
// simulator's timeline): the format and version attributes, series of equal length, numbered
// groups, the deck's summary lines and the bubble of a list of events.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "io/hdf5_file.hpp"

namespace p2bw::io::h5_checks {

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ");
// The non-negative number after `prefix` in `name` ("rank_3" -> 3), or -1.
int number_after(const std::string& name, const std::string& prefix);
// The file's format attribute; UserError naming `allowed` without one.
std::string format_of(const H5File& file, const std::string& allowed);
// UserError unless the file's format_version is `supported`.
void require_version(const H5File& file, const std::string& format, std::int64_t supported);
// Rows of the series `names` in `group`, which must all be 1-D and equally long.
hsize_t common_length(const H5File& file, const std::string& group,
                      const std::vector<std::string>& names);
// The numbered children `prefix<n>` of `group`, sorted by n; UserError for anything else.
std::vector<int> numbered_children(const H5File& file, const std::string& group,
                                   const std::string& prefix);
// "model: gpt, layers 4, hidden 32, ..." and "schedule 2bw, 4 microbatches of 2 sequences" from
// the resolved deck; a deck that does not parse is said so rather than failing the summary.
std::pair<std::string, std::string> deck_lines(const std::string& yaml);
// Which action codes (by position in a comma-separated action_names) are compute: F, B, Bi, Bw,
// forward*, backward*.
std::vector<bool> compute_codes(const std::string& action_names);
// Busy time and span of a list of events (busy counts the compute codes only).
std::pair<double, double> busy_and_span(const std::vector<std::int32_t>& kind,
                                        const std::vector<double>& start,
                                        const std::vector<double>& end,
                                        const std::vector<bool>& compute);

}  // namespace p2bw::io::h5_checks
